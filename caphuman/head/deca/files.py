"""Finding and reading the DECA / FLAME files a user places in the weights directory.

Files (the names of DECA's own data/ folder, which CapHuman's README also uses), looked up where
checkpoints/manifest.yaml puts them (``<weights>/deca/``) first and then directly in ``<weights>/``:

- ``deca_model.tar``: DECA's released checkpoint, a ``torch.save``'d dict with ``E_flame`` (the
  coarse ResNet-50 encoder's state dict; keys ``encoder.*`` and ``layers.{0,2}.*``), ``E_detail``
  and ``D_detail`` (the detail branch; not used here). Read with ``weights_only=True``.
- ``generic_model.pkl``: FLAME 2020, a Python 2 pickle whose arrays are partly chumpy objects.
  Read by :class:`RestrictedFlameUnpickler`, which only admits numpy/scipy reconstruction and
  chumpy array classes (chumpy itself does not install on current numpy). Fields used:
  ``v_template``, ``shapedirs``, ``posedirs``, ``J_regressor`` (scipy sparse), ``weights``,
  ``kintree_table``, ``f``.
- ``FLAME_texture.npz``: the FLAME texture space (what CapHuman configures DECA with:
  tex_type "FLAME"). Keys ``mean`` (H, W, 3) and ``tex_dir`` (H, W, 3, 200) in 0..255, BGR channel
  order (DECA flips them to RGB), plus ``vt`` (T, 2) texture coordinates and ``ft`` (F, 3) their
  per-triangle indices. Read with ``allow_pickle=False``.
- ``head_template.obj`` (optional): DECA's FLAME template with UVs. DECA's renderer takes its
  texture coordinates from this file, so when present its ``vt`` and per-face texture indices
  are used; otherwise FLAME_texture.npz's ``vt``/``ft`` (the same FLAME UV layout).
- ``landmark_embedding.npy`` (optional): DECA's 68 face landmarks on FLAME, read by
  :func:`caphuman.head.deca.flame_landmarks.load_flame_landmarks`.
"""

from __future__ import annotations

import copyreg
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch

from caphuman.errors import CapHumanError
from caphuman.head.deca.flame import FLAME_SHAPE_COMPONENTS, FlameModelData
from caphuman.weights.files import read_torch_file, without_data_parallel_prefix
from caphuman.weights.registry import find_entry_file, missing_weights, weights_entry

logger = logging.getLogger(__name__)

_CONVERT_HINT = (
    "re-save it with plain numpy arrays (in an environment with chumpy: load it, replace every chumpy "
    "object x by numpy.asarray(x), and pickle the dict again)"
)


@dataclass
class DecaAssetPaths:
    """Where each DECA/FLAME file is; ``head_template`` and ``landmark_embedding`` are None when
    absent (they are optional)."""

    deca_model: Path
    flame_model: Path
    flame_texture: Path
    head_template: Path | None
    landmark_embedding: Path | None = None

    @classmethod
    def locate(cls, weights_dir: str | os.PathLike) -> DecaAssetPaths:
        """Find the files at their manifest paths under ``weights_dir`` (``deca/``, preferred) or
        directly in ``weights_dir``.

        Raises:
            MissingWeightsError: naming the first missing file, where it should go and where to get it.
        """
        found: dict[str, Path] = {}
        for name, what in (("deca_model", "DECA encoder weights"), ("flame_model", "FLAME head model"), ("flame_texture", "FLAME texture space")):
            path = find_entry_file(weights_entry(name), weights_dir)
            if not path.is_file():
                raise missing_weights(name, what, path)
            found[name] = path
        optional = {
            field_name: find_entry_file(weights_entry(name), weights_dir)
            for field_name, name in (("head_template", "head_template"), ("landmark_embedding", "flame_landmarks"))
        }
        return cls(**found, **{field_name: path if path.is_file() else None for field_name, path in optional.items()})


# ---------------------------------------------------------------------------------------------
# generic_model.pkl


class ChumpyArray:
    """Stand-in for a pickled chumpy object: keeps its pickled state, turns it into numpy later.

    A pickled chumpy ``Ch`` is ``cls.__new__(cls)`` followed by ``__setstate__(dict)``, where the
    dict holds the value under ``x``; reordering classes hold their input under ``a`` plus their
    own parameters. Nothing in the state is executed.
    """

    kind = "Ch"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CapHumanError(f"A chumpy {self.kind} object in the FLAME model has unexpected state; {_CONVERT_HINT}.")
        self.state = state

    def to_numpy(self) -> np.ndarray:
        state = getattr(self, "state", None)
        if state is None:
            raise CapHumanError(f"A chumpy {self.kind} object in the FLAME model has no state; {_CONVERT_HINT}.")
        return self._value(state)

    def _value(self, state: dict) -> np.ndarray:
        return _as_numpy(state["x"])


class ChumpySelect(ChumpyArray):
    kind = "Select"

    def _value(self, state: dict) -> np.ndarray:
        values = _as_numpy(state["a"]).ravel()[np.asarray(state["idxs"])]
        return values.reshape(state["preferred_shape"]) if "preferred_shape" in state else values


class ChumpyTranspose(ChumpyArray):
    kind = "transpose"

    def _value(self, state: dict) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(_as_numpy(state["a"]), axes=state.get("axes")))


class ChumpyReshape(ChumpyArray):
    kind = "Reshape"

    def _value(self, state: dict) -> np.ndarray:
        return _as_numpy(state["a"]).reshape(state["newshape"])


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, ChumpyArray):
        return value.to_numpy()
    if scipy.sparse.issparse(value):
        return np.asarray(value.todense())
    return np.asarray(value)


# numpy's own reconstruction helpers, found through its pickling protocol rather than private
# module paths (they moved from numpy.core to numpy._core in numpy 2).
_NDARRAY_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_SCALAR_RECONSTRUCT = np.float64(0.0).__reduce__()[0]


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 pickles (protocol < 3) call to rebuild ``bytes``: ``_codecs.encode(text, "latin1")``.

    Only that codec is accepted, so the allow-list does not open the whole codec registry.
    """
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise CapHumanError(f"The FLAME model file asks for the '{encoding}' codec, which this loader does not allow.")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _NDARRAY_RECONSTRUCT for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _SCALAR_RECONSTRUCT for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(module, "csc_matrix"): scipy.sparse.csc_matrix for module in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse")},
    **{(module, "csr_matrix"): scipy.sparse.csr_matrix for module in ("scipy.sparse.csr", "scipy.sparse._csr", "scipy.sparse")},
    # Protocol 0/1 pickles rebuild plain objects through copyreg; the classes it gets are again
    # looked up here, so it cannot reach anything outside this list.
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
    ("chumpy.ch", "Ch"): ChumpyArray,
    ("chumpy.reordering", "Select"): ChumpySelect,
    ("chumpy.reordering", "transpose"): ChumpyTranspose,
    ("chumpy.reordering", "Reshape"): ChumpyReshape,
}


class RestrictedFlameUnpickler(pickle.Unpickler):
    """Unpickler for FLAME/SMPL-style model files that only admits array classes.

    Any global outside the allow-list (numpy array/dtype/scalar reconstruction, scipy sparse
    csc/csr matrices, chumpy array classes mapped to :class:`ChumpyArray` stand-ins) is refused,
    so a tampered pickle cannot run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise CapHumanError(
                f"The FLAME model file references '{module}.{name}', which this loader does not allow; "
                f"if it is a genuine FLAME file, {_CONVERT_HINT}."
            )
        return allowed


def load_flame_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Read a FLAME generic_model.pkl with :class:`RestrictedFlameUnpickler`; chumpy values become numpy.

    Raises:
        CapHumanError: the file is not a readable pickle of a dict, or references a disallowed class.
    """
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            # latin1 decodes Python 2 str payloads (numpy buffers) byte for byte.
            data = RestrictedFlameUnpickler(stream, encoding="latin1").load()
    except CapHumanError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError) as error:
        raise CapHumanError(f"FLAME model file '{path}' could not be read as a FLAME pickle ({error}).") from error
    if not isinstance(data, dict):
        raise CapHumanError(f"FLAME model file '{path}' holds a {type(data).__name__}, expected a dict of arrays.")
    return {key: (value.to_numpy() if isinstance(value, ChumpyArray) else value) for key, value in data.items()}


def load_flame_model(path: str | os.PathLike) -> FlameModelData:
    """FLAME arrays from generic_model.pkl (see :func:`load_flame_pickle`).

    Raises:
        CapHumanError: a required field is missing or has an inconsistent shape.
    """
    data = load_flame_pickle(path)
    required = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
    missing = [key for key in required if key not in data]
    if missing:
        raise CapHumanError(f"FLAME model file '{path}' lacks the field(s) {', '.join(missing)}.")
    v_template = _as_numpy(data["v_template"]).astype(np.float32)
    num_vertices = v_template.shape[0]
    model = FlameModelData(
        v_template=v_template,
        shapedirs=_as_numpy(data["shapedirs"]).astype(np.float32),
        posedirs=_as_numpy(data["posedirs"]).astype(np.float32),
        j_regressor=_as_numpy(data["J_regressor"]).astype(np.float32),
        weights=_as_numpy(data["weights"]).astype(np.float32),
        # kintree_table row 0 lists each joint's parent; the root's entry is a sentinel.
        parents=np.concatenate([[-1], _as_numpy(data["kintree_table"])[0, 1:].astype(np.int64)]),
        faces=_as_numpy(data["f"]).astype(np.int64),
        shape_components=FLAME_SHAPE_COMPONENTS,
    )
    checks = {
        "v_template": (model.v_template.ndim == 2 and model.v_template.shape[1] == 3),
        "shapedirs": model.shapedirs.shape[:2] == (num_vertices, 3),
        "posedirs": model.posedirs.shape[:2] == (num_vertices, 3),
        "J_regressor": model.j_regressor.ndim == 2 and model.j_regressor.shape[1] == num_vertices,
        "weights": model.weights.shape == (num_vertices, model.j_regressor.shape[0]),
        "f": model.faces.ndim == 2 and model.faces.shape[1] == 3,
    }
    bad = [key for key, ok in checks.items() if not ok]
    if bad:
        raise CapHumanError(f"FLAME model file '{path}' has unexpected shapes for {', '.join(bad)}.")
    if model.shapedirs.shape[2] < FLAME_SHAPE_COMPONENTS:
        # Some trimmed FLAME exports keep fewer shape components; the expression part then
        # cannot be found at its usual offset.
        raise CapHumanError(
            f"FLAME model file '{path}' has {model.shapedirs.shape[2]} blendshapes; FLAME 2020 has "
            f"{FLAME_SHAPE_COMPONENTS} shape + 100 expression components."
        )
    return model


# ---------------------------------------------------------------------------------------------
# FLAME_texture.npz


@dataclass
class FlameTexture:
    """The FLAME texture space, RGB, in [0, 1] units.

    Attributes:
        mean: (H, W, 3) float32 mean albedo texture, RGB, rows from the top of the UV image.
        basis: (H, W, 3, K) float32 principal directions (first K kept), same layout.
        uvs: (T, 2) float32 texture coordinates (u right, v up, OBJ convention).
        uv_faces: (F, 3) int64 indices into ``uvs`` per FLAME triangle corner.
    """

    mean: np.ndarray
    basis: np.ndarray
    uvs: np.ndarray
    uv_faces: np.ndarray


def load_flame_texture(path: str | os.PathLike, num_components: int = 50, head_template: str | os.PathLike | None = None) -> FlameTexture:
    """Read FLAME_texture.npz (``allow_pickle=False``) and keep ``num_components`` directions.

    Channels are flipped from the file's BGR to RGB and values divided by 255, as DECA does for
    tex_type "FLAME". UVs come from ``head_template`` (.obj) when given, as in DECA's renderer,
    else from the file's ``vt``/``ft``.

    Raises:
        CapHumanError: missing keys, too few components, or no UVs anywhere.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            for key in ("mean", "tex_dir"):
                if key not in keys:
                    raise CapHumanError(f"FLAME texture file '{path}' lacks '{key}' (found {sorted(keys)}).")
            mean = np.asarray(archive["mean"], dtype=np.float32)
            directions = archive["tex_dir"]
            if directions.ndim != 4 or directions.shape[:3] != mean.shape or mean.ndim != 3 or mean.shape[2] != 3:
                raise CapHumanError(
                    f"FLAME texture file '{path}' has mean {mean.shape} and tex_dir {directions.shape}; expected (H, W, 3) and (H, W, 3, K)."
                )
            if directions.shape[3] < num_components:
                raise CapHumanError(f"FLAME texture file '{path}' has {directions.shape[3]} components, need {num_components}.")
            basis = np.ascontiguousarray(directions[..., :num_components], dtype=np.float32)
            del directions
            uvs = np.asarray(archive["vt"], dtype=np.float32) if "vt" in keys else None
            uv_faces = np.asarray(archive["ft"], dtype=np.int64) if "ft" in keys else None
    except (OSError, ValueError) as error:
        raise CapHumanError(f"FLAME texture file '{path}' could not be read ({error}).") from error
    if head_template is not None:
        uvs, uv_faces = read_obj_uvs(head_template)
    elif uvs is None or uv_faces is None:
        raise CapHumanError(
            f"FLAME texture file '{path}' has no 'vt'/'ft' texture coordinates; "
            f"put DECA's {Path(weights_entry('head_template').path).name} next to it."
        )
    # BGR -> RGB and 0..255 -> 0..1, on the channel axis (2) of both arrays.
    return FlameTexture(
        mean=np.ascontiguousarray(mean[:, :, ::-1] / 255.0, dtype=np.float32),
        basis=np.ascontiguousarray(basis[:, :, ::-1] / 255.0, dtype=np.float32),
        uvs=uvs,
        uv_faces=uv_faces,
    )


def read_obj_uvs(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Texture coordinates of a Wavefront .obj: (T, 2) ``vt`` rows and (F, 3) 0-based per-corner ``vt`` indices.

    Raises:
        CapHumanError: the file is unreadable or has faces without texture indices.
    """
    path = Path(path)
    uvs: list[list[float]] = []
    uv_faces: list[list[int]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "vt":
                    uvs.append([float(parts[1]), float(parts[2])])
                elif parts[0] == "f":
                    corners = [corner.split("/") for corner in parts[1:4]]
                    if any(len(corner) < 2 or not corner[1] for corner in corners):
                        raise CapHumanError(f"Mesh file '{path}' has faces without texture coordinates.")
                    uv_faces.append([int(corner[1]) - 1 for corner in corners])
    except OSError as error:
        raise CapHumanError(f"Mesh file '{path}' could not be read ({error}).") from error
    if not uvs or not uv_faces:
        raise CapHumanError(f"Mesh file '{path}' has no texture coordinates.")
    return np.asarray(uvs, dtype=np.float32), np.asarray(uv_faces, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# deca_model.tar


def load_deca_encoder_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The coarse encoder's state dict (``E_flame``) from deca_model.tar, read with ``weights_only=True``.

    Raises:
        CapHumanError: unreadable file, or no ``E_flame`` entry.
    """
    path = Path(path)
    checkpoint = read_torch_file(path)
    if not isinstance(checkpoint, dict) or "E_flame" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CapHumanError(f"DECA checkpoint '{path}' has no 'E_flame' entry (found {found}).")
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    return without_data_parallel_prefix(checkpoint["E_flame"])
