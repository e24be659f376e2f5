"""One preprocessed training example (:class:`FaceRecord`) and its on-disk file layout.

A record is stored as several files that share the record's key as a name prefix, the layout
webdataset-style tar readers group into samples (everything up to the first dot of a member's
name is the key, so keys never contain dots):

========================  ==============================================================
``KEY.image.png``          (S, S, 3) uint8 RGB aligned full image: the training target
``KEY.clip.png``           (224, 224, 3) uint8 RGB reference face, non-face painted white
``KEY.mask.png``           (S, S) face region, stored 0/255 so it is viewable; read back as {0, 1}
``KEY.embedding.npy``      (G,) float32 global identity embedding of the same face
``KEY.hint.npy``           (9, S, S) float16 rendered head condition (normals, albedo, shaded)
``KEY.params.npz``         HeadParams fields, float32 arrays without the batch dim, + "backend"
``KEY.json``               {"caption": str, "source": str}
========================  ==============================================================
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from caphuman.conditions.hint_layout import HINT_CHANNELS
from caphuman.head.params import HeadParams

CLIP_CROP_SIZE = 224

# Member suffixes after "KEY." (order = the order members are written in a shard).
IMAGE_SUFFIX = "image.png"
CLIP_SUFFIX = "clip.png"
MASK_SUFFIX = "mask.png"
EMBEDDING_SUFFIX = "embedding.npy"
HINT_SUFFIX = "hint.npy"
PARAMS_SUFFIX = "params.npz"
META_SUFFIX = "json"
RECORD_SUFFIXES = (IMAGE_SUFFIX, CLIP_SUFFIX, MASK_SUFFIX, EMBEDDING_SUFFIX, HINT_SUFFIX, PARAMS_SUFFIX, META_SUFFIX)

_TENSOR_FIELDS = tuple(f.name for f in dataclasses.fields(HeadParams) if f.name != "backend")


def record_key(source: str) -> str:
    """Stable record id of a source path (relative to the images folder, '/'-separated).

    The SHA-1 hex digest: the same photo path always gets the same key, so a rerun can tell what
    is done, and hex digits never contain the dot that separates key from suffix in a shard.
    """
    return hashlib.sha1(source.encode("utf-8")).hexdigest()


@dataclass
class FaceRecord:
    """One training example, as :mod:`caphuman.data.preprocess` makes it.

    Attributes:
        key: stable id, :func:`record_key` of ``source``.
        image: (S, S, 3) uint8 aligned full image (the training target; S = 512 by default).
        clip_crop: (224, 224, 3) uint8 reference face crop, non-face painted white (CLIP input).
        face_embedding: (G,) float32 global identity embedding of the same image's face.
        face_mask: (S, S) uint8 in {0, 1}: face region (BiSeNet labels when present, else the
            mesh's face oval), in the pixels of ``image``.
        hint: (9, S, S) float16 head condition rendered for ``image``: normals in [-1, 1],
            albedo and shaded render (in [0, 1] from the built-in prior; unclipped from the DECA
            prior, as DECA renders them), 0 on the background.
        head_params: HeadParams fields as float32 arrays with the batch dim dropped, plus
            "backend" as a 0-d str array (see :func:`head_params_to_arrays`).
        caption: text prompt of the image.
        source: original file path relative to the images folder ('/'-separated).
    """

    key: str
    image: np.ndarray
    clip_crop: np.ndarray
    face_embedding: np.ndarray
    face_mask: np.ndarray
    hint: np.ndarray
    head_params: dict[str, np.ndarray]
    caption: str
    source: str

    def __post_init__(self) -> None:
        self.validate()

    @property
    def image_size(self) -> int:
        return int(self.image.shape[0])

    def validate(self) -> None:
        """Check shapes and dtypes against the documented layout (ValueError names the field)."""
        size = self.image.shape[0] if self.image.ndim == 3 else -1
        expected = {
            "image": ((size, size, 3), np.uint8),
            "clip_crop": ((CLIP_CROP_SIZE, CLIP_CROP_SIZE, 3), np.uint8),
            "face_mask": ((size, size), np.uint8),
            "hint": ((HINT_CHANNELS, size, size), np.float16),
        }
        for name, (shape, dtype) in expected.items():
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype:
                got = (getattr(value, "shape", None), getattr(value, "dtype", type(value)))
                raise ValueError(f"FaceRecord.{name} must be {shape} {np.dtype(dtype)}, got {got[0]} {got[1]}.")
        if self.face_embedding.ndim != 1 or self.face_embedding.dtype != np.float32:
            raise ValueError(f"FaceRecord.face_embedding must be (G,) float32, got {self.face_embedding.shape} {self.face_embedding.dtype}.")
        if self.face_mask.size and self.face_mask.max() > 1:
            raise ValueError("FaceRecord.face_mask must hold only 0 and 1.")
        missing = [name for name in (*_TENSOR_FIELDS, "backend") if name not in self.head_params]
        if missing:
            raise ValueError(f"FaceRecord.head_params lacks {missing}.")
        if "." in self.key or "/" in self.key:
            raise ValueError(f"FaceRecord.key '{self.key}' must not contain '.' or '/' (shard member names split on them).")

    def to_files(self) -> dict[str, bytes]:
        """Encode as {suffix: bytes}, the members ``KEY.<suffix>`` of a shard."""
        return {
            IMAGE_SUFFIX: _png_bytes(self.image),
            CLIP_SUFFIX: _png_bytes(self.clip_crop),
            # 0/255 so the mask is visible in any image viewer.
            MASK_SUFFIX: _png_bytes(self.face_mask * np.uint8(255)),
            EMBEDDING_SUFFIX: _npy_bytes(self.face_embedding),
            HINT_SUFFIX: _npy_bytes(self.hint),
            PARAMS_SUFFIX: _npz_bytes(self.head_params),
            META_SUFFIX: json.dumps({"caption": self.caption, "source": self.source}, ensure_ascii=False).encode("utf-8"),
        }

    @classmethod
    def from_files(cls, key: str, files: dict[str, bytes]) -> FaceRecord:
        """Decode the members written by :meth:`to_files` (exact round trip)."""
        missing = [suffix for suffix in RECORD_SUFFIXES if suffix not in files]
        if missing:
            raise ValueError(f"Record '{key}' lacks the member(s) {', '.join(f'{key}.{s}' for s in missing)}.")
        return cls(key=key, **decode_members(files))


def decode_members(files: dict[str, bytes]) -> dict[str, Any]:
    """Decode whichever members are given ({suffix: bytes}) into FaceRecord field values.

    Lets a reader decode only what it needs (training skips the head parameters).
    """
    fields: dict[str, Any] = {}
    if IMAGE_SUFFIX in files:
        fields["image"] = _png_array(files[IMAGE_SUFFIX])
    if CLIP_SUFFIX in files:
        fields["clip_crop"] = _png_array(files[CLIP_SUFFIX])
    if MASK_SUFFIX in files:
        fields["face_mask"] = (_png_array(files[MASK_SUFFIX]) > 127).astype(np.uint8)
    if EMBEDDING_SUFFIX in files:
        fields["face_embedding"] = _npy_array(files[EMBEDDING_SUFFIX])
    if HINT_SUFFIX in files:
        fields["hint"] = _npy_array(files[HINT_SUFFIX])
    if PARAMS_SUFFIX in files:
        fields["head_params"] = _npz_arrays(files[PARAMS_SUFFIX])
    if META_SUFFIX in files:
        meta = json.loads(files[META_SUFFIX].decode("utf-8"))
        fields["caption"], fields["source"] = str(meta["caption"]), str(meta["source"])
    return fields


def head_params_to_arrays(params: HeadParams, index: int = 0) -> dict[str, np.ndarray]:
    """One head of a batch as float32 numpy arrays (batch dim dropped) + "backend" (0-d str array)."""
    arrays = {name: getattr(params, name)[index].detach().cpu().numpy().astype(np.float32) for name in _TENSOR_FIELDS}
    arrays["backend"] = np.array(params.backend)
    return arrays


def head_params_from_arrays(arrays: dict[str, np.ndarray]) -> HeadParams:
    """Inverse of :func:`head_params_to_arrays`: a batch of one (B = 1) :class:`HeadParams`."""
    tensors = {name: torch.from_numpy(np.asarray(arrays[name], dtype=np.float32).copy())[None] for name in _TENSOR_FIELDS}
    return HeadParams(**tensors, backend=str(np.asarray(arrays["backend"])))


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # compress_level 1: about 10 % larger than the default 6 but several times faster to write;
    # decoding speed (what training pays) is the same.
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).copy()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _npy_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    # Compressed: the builtin prior's per-vertex albedo and shape offsets are ~130 KB raw.
    np.savez_compressed(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return buffer.getvalue()


def _npz_arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
