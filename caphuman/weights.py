"""The user-supplied weights files: the manifest, safe reading, and per-file validation.

``checkpoints/manifest.yaml`` lists every file the real (non-tiny) path reads: where it goes,
its kind, checksums where known, where to get it, its licence, and which capabilities
(commands/backends) need it. :func:`check_entry` validates one entry with the loaders the real
path uses (or, for multi-gigabyte files, by reading tensor names and shapes only) and never
raises: a problem becomes a ``malformed`` :class:`FileCheck` with one sentence.

Reading rules (shared by every loader here):

- ``.safetensors``: the header is parsed and checked against the file size (a truncated file
  is reported, not half-read); tensors are read with plain file reads into fresh tensors, so
  the process holds exactly one copy (a memory map would add the mapped pages to the RSS).
- torch pickles (``.ckpt``/``.pt``/``.pth``/``.tar``/``.bin``): ``torch.load(weights_only=True)``,
  memory-mapped when the file is in the zip format (so reading a subset touches only that
  subset). When ``weights_only`` refuses the file, the error says how to convert it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from caphuman._resources import shipped_root
from caphuman.errors import CapHumanError, MissingWeightsError

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.yaml"
# The repository's checkpoints/manifest.yaml, or its copy inside an installed package.
DEFAULT_MANIFEST = shipped_root() / "checkpoints" / MANIFEST_FILE

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
# A safetensors header larger than this is not a real header (the format caps it at 100 MB).
_MAX_HEADER_BYTES = 100_000_000
TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".tar", ".bin")

STATUS_PRESENT = "present"
STATUS_MISSING = "missing"
STATUS_MALFORMED = "malformed"
STATUS_UNUSED = "not used"

CAPABILITIES: dict[str, str] = {
    "sample-sd15": "caphuman sample with an SD 1.5 backbone (own adapter or fresh CapFace, built-in head prior)",
    "sample-sd15-published": "caphuman sample --config configs/caphuman_sd15.yaml: the published model (released weights, FaceNet, DECA)",
    "train-sd15": "caphuman train on SD 1.5",
    "train-sd15-finetune": "caphuman train starting from the released CapHuman weights",
    "convert": "caphuman convert --from caphuman.ckpt (original release -> checkpoints/caphuman)",
    "recognizer-facenet": "model.face_recognizer: facenet (as released)",
    "recognizer-arcface": "model.face_recognizer: arcface (ONNX)",
    "face-parser-bisenet": "identity.face_parser: bisenet (as released; 'mesh' uses the face-mesh oval offline)",
    "head-prior-deca": "model.head_prior: deca (faithful to the released weights)",
    "eval-identity": "FaceNet identity similarity metric",
    "body-controlnet": "caphuman sample --body-control-strength: the official second (OpenPose) ControlNet",
}


# ------------------------------------------------------------------------------------------
# Manifest


@dataclass(frozen=True)
class WeightEntry:
    """One manifest entry (see checkpoints/manifest.yaml for the meaning of each field)."""

    name: str
    path: str
    kind: str
    source: str
    licence: str
    needed_by: tuple[str, ...] = ()
    optional: bool = False
    config_key: str | None = None
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    hf_files: tuple[str, ...] = ()
    hf_verified: bool = False

    @property
    def on_hub(self) -> bool:
        return self.hf_repo is not None and (self.hf_filename is not None or bool(self.hf_files))


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, WeightEntry]:
    """Entries of ``manifest.yaml`` by name (default: the repository's checkpoints/manifest.yaml).

    Raises:
        CapHumanError: the file is missing or an entry lacks a required field.
    """
    path = Path(path) if path is not None else DEFAULT_MANIFEST
    if not path.is_file():
        raise CapHumanError(f"Weights manifest '{path}' does not exist.")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries: dict[str, WeightEntry] = {}
    known = set(WeightEntry.__dataclass_fields__)
    for name, fields in (data.get("files") or {}).items():
        unknown = set(fields) - known
        if unknown:
            raise CapHumanError(f"Manifest '{path}' entry '{name}' has unknown field(s) {sorted(unknown)}.")
        try:
            entries[name] = WeightEntry(
                name=name,
                **{
                    key: tuple(value) if key in ("needed_by", "hf_files") else value
                    for key, value in fields.items()
                },
            )
        except TypeError as error:
            raise CapHumanError(f"Manifest '{path}' entry '{name}' is incomplete ({error}).") from None
    return entries


def config_value(config: Any, dotted_key: str) -> Any:
    """``config.model.vae`` for ``"model.vae"`` (a missing attribute raises AttributeError)."""
    value = config
    for part in dotted_key.split("."):
        value = getattr(value, part)
    return value


def entry_path(entry: WeightEntry, weights_dir: str | os.PathLike, config: Any | None = None) -> Path | None:
    """Where ``entry`` is expected: the config's value when it has one, else the manifest path.

    Returns None when the config switches the file off (e.g. ``model.vae: null``).
    """
    relative: str | None = entry.path
    if config is not None and entry.config_key is not None:
        relative = config_value(config, entry.config_key)
        if relative is None:
            return None
    path = Path(relative)
    return path if path.is_absolute() else Path(weights_dir) / path


# ------------------------------------------------------------------------------------------
# Reading weight files


@dataclass(frozen=True)
class TensorInfo:
    """A safetensors header entry: dtype name, shape and byte range within the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    data_start: int
    metadata: dict[str, str] = field(default_factory=dict)


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse and check a .safetensors header (8-byte little-endian length, then JSON).

    Raises:
        CapHumanError: not a safetensors file, or its tensors reach past the end (truncated).
    """
    path = Path(path)
    file_size = path.stat().st_size
    try:
        with open(path, "rb") as stream:
            length = int.from_bytes(stream.read(8), "little")
            if file_size < 8 or length <= 0 or length > min(_MAX_HEADER_BYTES, file_size - 8):
                raise ValueError("no valid header")
            raw = json.loads(stream.read(length))
    except (ValueError, UnicodeDecodeError) as error:
        raise CapHumanError(f"'{path}' is not a readable safetensors file ({error}).") from None
    metadata = raw.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    data_size = file_size - 8 - length
    for name, info in raw.items():
        try:
            begin, end = (int(offset) for offset in info["data_offsets"])
            tensor = TensorInfo(dtype=str(info["dtype"]), shape=tuple(int(d) for d in info["shape"]), begin=begin, end=end)
        except (KeyError, TypeError, ValueError):
            raise CapHumanError(f"'{path}' has a malformed safetensors header entry '{name}'.") from None
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise CapHumanError(f"'{path}' stores '{name}' as {tensor.dtype}, which is not supported.")
        if tensor.end > data_size or tensor.begin > tensor.end:
            raise CapHumanError(
                f"'{path}' is truncated or damaged: tensor '{name}' ends at byte {tensor.end} of a {data_size}-byte data section."
            )
        tensors[name] = tensor
    return SafetensorsHeader(tensors=tensors, data_start=8 + length, metadata=dict(metadata))


def read_safetensors(path: str | os.PathLike, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Read the tensors of a .safetensors file for which ``keep(name)`` is true, one copy each.

    Plain reads into freshly allocated tensors (no memory map): only the kept tensors ever
    occupy process memory.
    """
    path = Path(path)
    header = read_safetensors_header(path)
    tensors: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as stream:
        for name, info in sorted(header.tensors.items(), key=lambda item: item[1].begin):
            if keep is not None and not keep(name):
                continue
            nbytes = info.end - info.begin
            buffer = torch.empty(nbytes, dtype=torch.uint8)
            stream.seek(header.data_start + info.begin)
            if nbytes and stream.readinto(memoryview(buffer.numpy())) != nbytes:
                raise CapHumanError(f"'{path}' is truncated: could not read tensor '{name}'.")
            tensors[name] = buffer.view(SAFETENSORS_DTYPES[info.dtype]).reshape(info.shape)
    return tensors


def conversion_hint(path: Path) -> str:
    """How to turn a pickle that weights_only refuses into safetensors (only for trusted files)."""
    target = path.with_suffix(".safetensors")
    return (
        "if you trust this file, convert it once to safetensors: python -c \"import torch, safetensors.torch as st; "
        f"sd = torch.load('{path}', map_location='cpu', weights_only=False); sd = sd.get('state_dict', sd); "
        f"st.save_file({{k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}}, '{target}')\" "
        "and point the config at the .safetensors file"
    )


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, memory-mapped when the format allows.

    Raises:
        CapHumanError: unreadable/truncated file, or a pickle that weights_only refuses (the
            message says how to convert it).
    """
    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            # Files saved by torch < 1.6 (legacy, non-zip) cannot be memory-mapped.
            if "mmap" not in str(error) and "zip" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        first_line = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(error).__name__
        if "weights_only" in text or "Weights only" in text or "Unsupported global" in text:
            # torch names the refused class on a line "WeightsUnpickler error: Unsupported global: ..."
            refused = next((line.split("error:", 1)[-1].strip() for line in text.splitlines() if "Unsupported global" in line), first_line)
            raise CapHumanError(
                f"'{path}' contains Python objects that torch.load(weights_only=True) refuses ({refused.split('. ')[0]}); "
                + conversion_hint(path)
                + "."
            ) from None
        raise CapHumanError(f"'{path}' is not a readable torch checkpoint ({first_line}).") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError) as error:
        reason = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else type(error).__name__
        raise CapHumanError(f"'{path}' is not a readable torch checkpoint (truncated or damaged: {reason}).") from None


def unwrap_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint: ``state_dict`` when present, else the top level.

    Non-tensor entries (Lightning's step counters etc.) are dropped.
    """
    while isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise CapHumanError(f"'{path}' holds a {type(loaded).__name__}, not a state dict.")
    tensors = {key: value for key, value in loaded.items() if isinstance(key, str) and isinstance(value, torch.Tensor)}
    if not tensors:
        raise CapHumanError(f"'{path}' holds no tensors.")
    return tensors


def read_state_dict(
    path: str | os.PathLike, keep: Callable[[str], bool] | None = None, what: str = "weights", source: str = "checkpoints/README.md"
) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch file whose names pass ``keep`` (default: all).

    Raises:
        MissingWeightsError: no file at ``path``.
        CapHumanError: unreadable, truncated, or refused by weights_only (with a conversion hint).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(what, str(path), source)
    if path.suffix == ".safetensors":
        return read_safetensors(path, keep)
    state = unwrap_state_dict(read_torch_file(path), path)
    return {key: value for key, value in state.items() if keep is None or keep(key)}


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a weights file, without reading tensor data where possible.

    For torch files this also checks the file is at least as large as the tensors it claims
    (a size sanity check: memory-mapped loading would otherwise defer a short read).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return {name: info.shape for name, info in read_safetensors_header(path).tensors.items()}
    state = unwrap_state_dict(read_torch_file(path), path)
    storages = {id(value.untyped_storage()): value.untyped_storage().nbytes() for value in state.values()}
    claimed, actual = sum(storages.values()), path.stat().st_size
    if claimed > actual:
        raise CapHumanError(f"'{path}' is truncated: its tensors need {claimed} bytes but the file has {actual}.")
    return {name: tuple(value.shape) for name, value in state.items()}


# ------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class FileCheck:
    """The outcome of checking one manifest entry."""

    name: str
    path: Path | None
    status: str
    detail: str = ""


def _require_keys(path: Path, shapes: Mapping[str, tuple[int, ...]], required: Iterable[str], what: str) -> str:
    missing = [key for key in required if key not in shapes]
    if missing:
        raise CapHumanError(f"'{path}' does not look like {what}: missing {', '.join(missing[:4])}.")
    return f"{len(shapes)} tensors"


def _require_prefixes(path: Path, names: Iterable[str], prefixes: Iterable[str], what: str) -> None:
    names = list(names)
    missing = [prefix for prefix in prefixes if not any(name.startswith(prefix) for name in names)]
    if missing:
        raise CapHumanError(f"'{path}' does not look like {what}: no tensors under {', '.join(missing)}.")


def _weights_in_folder(folder: Path, candidates: Iterable[str]) -> Path:
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise CapHumanError(f"'{folder}' has no weights file ({', '.join(candidates)}).")


def check_sd_checkpoint(path: Path) -> str:
    """An SD 1.5 diffusers folder, or a single file in the original ldm layout."""
    if path.is_dir():
        for sub in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json"):
            if not (path / sub).is_file():
                raise CapHumanError(f"'{path}' is a folder but not a diffusers SD pipeline (no {sub}).")
        unet_file = _weights_in_folder(path / "unet", ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"))
        if unet_file.suffix == ".safetensors":
            read_safetensors_header(unet_file)
        return "diffusers folder"
    from caphuman.models.sd_loading import LDM_TEXT_PREFIX, LDM_UNET_PREFIX, LDM_VAE_PREFIX

    shapes = tensor_shapes(path)
    _require_prefixes(path, shapes, (LDM_UNET_PREFIX, LDM_VAE_PREFIX, LDM_TEXT_PREFIX), "an SD 1.5 checkpoint in the original layout")
    conv_in = shapes.get(LDM_UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4 or conv_in[1] != 4:
        raise CapHumanError(f"'{path}' has no 4-channel UNet input convolution ({conv_in}); it is not an SD 1.5 text-to-image checkpoint.")
    return f"{len(shapes)} tensors, UNet width {conv_in[0]}"


def check_vae(path: Path) -> str:
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CapHumanError(f"'{path}' is a folder without config.json.")
        return "diffusers folder"
    shapes = tensor_shapes(path)
    if "encoder.conv_in.weight" in shapes or "first_stage_model.encoder.conv_in.weight" in shapes:
        return f"{len(shapes)} tensors"
    raise CapHumanError(f"'{path}' does not look like a VAE: no encoder.conv_in.weight.")


def check_clip_folder(path: Path) -> str:
    if not path.is_dir():
        raise CapHumanError(f"'{path}' should be a folder (the files of openai/clip-vit-large-patch14).")
    if not (path / "config.json").is_file():
        raise CapHumanError(f"'{path}' has no config.json.")
    weights = _weights_in_folder(path, ("model.safetensors", "pytorch_model.bin"))
    names = tensor_shapes(weights)
    if not any(name.endswith("embeddings.patch_embedding.weight") for name in names):
        raise CapHumanError(f"'{weights}' has no CLIP vision tower (no embeddings.patch_embedding.weight).")
    if not ((path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file())):
        raise CapHumanError(f"'{path}' has no tokenizer files (tokenizer.json, or vocab.json + merges.txt).")
    return f"{len(names)} tensors"


def check_caphuman_adapter(path: Path) -> str:
    from caphuman.models.adapter import METADATA_FILE

    if not (path / METADATA_FILE).is_file():
        raise CapHumanError(f"'{path}' is not a CapHuman adapter folder (no {METADATA_FILE}).")
    for sub, required in (
        ("capface", ("face_mask_head.weight", "controlnet_cond_embedding.conv_in.weight", "controlnet_mid_block.weight")),
        ("identity_encoder", ("local_projection.weight", "global_projection.weight")),
    ):
        if not (path / sub / "config.json").is_file():
            raise CapHumanError(f"'{path / sub}' has no config.json.")
        weights = _weights_in_folder(path / sub, ("diffusion_pytorch_model.safetensors",))
        _require_keys(weights, tensor_shapes(weights), required, f"CapHuman {sub} weights")
    return "adapter folder"


def check_caphuman_original(path: Path) -> str:
    from caphuman.convert import ORIGINAL_REQUIRED_KEYS

    shapes = tensor_shapes(path)
    _require_keys(path, shapes, ORIGINAL_REQUIRED_KEYS, "the original caphuman.ckpt")
    return f"{len(shapes)} tensors"


def check_facenet(path: Path) -> str:
    from caphuman.faces.facenet import FaceNetRecognizer

    FaceNetRecognizer.from_file(path, device="cpu")
    return "loads (InceptionResnetV1)"


def check_onnx(path: Path) -> str:
    from caphuman.faces.arcface_onnx import ArcFaceOnnxRecognizer

    ArcFaceOnnxRecognizer.from_file(path, device="cpu")
    return "loads (onnxruntime)"


def check_bisenet(path: Path) -> str:
    from caphuman.faces.bisenet import FaceParser

    FaceParser.from_file(path, device="cpu")
    return "loads (BiSeNet)"


def check_deca_model(path: Path) -> str:
    from accelerate import init_empty_weights

    from caphuman.head.deca.files import load_deca_encoder_state
    from caphuman.head.deca.encoder import DecaCoarseEncoder

    state = load_deca_encoder_state(path)
    with init_empty_weights():  # names and shapes only; no weights are allocated
        expected = {key: tuple(value.shape) for key, value in DecaCoarseEncoder().state_dict().items()}
    missing = sorted(key for key in expected if key not in state and not key.endswith("num_batches_tracked"))
    mis_shaped = sorted(key for key in expected if key in state and tuple(state[key].shape) != expected[key])
    if missing or mis_shaped:
        raise CapHumanError(f"'{path}' E_flame does not match DECA's encoder: missing {missing[:3]}, mis-shaped {mis_shaped[:3]}.")
    return f"E_flame: {len(state)} tensors"


def check_flame_model(path: Path) -> str:
    from caphuman.head.deca.files import load_flame_model

    model = load_flame_model(path)
    return f"{model.v_template.shape[0]} vertices"


def check_flame_texture(path: Path) -> str:
    from caphuman.head.deca.files import HEAD_TEMPLATE_FILE, load_flame_texture

    template = path.parent / HEAD_TEMPLATE_FILE
    texture = load_flame_texture(path, head_template=template if template.is_file() else None)
    return f"{texture.mean.shape[0]}x{texture.mean.shape[1]} texture"


def check_body_controlnet(path: Path) -> str:
    """An OpenPose ControlNet: a diffusers folder (config.json + weights) or an original single
    file with the ldm ControlNet stem (``input_hint_block``), with or without ``control_model.``."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CapHumanError(f"'{path}' is a folder without config.json.")
        weights = _weights_in_folder(path, ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"))
        _require_keys(weights, tensor_shapes(weights), ("controlnet_cond_embedding.conv_in.weight",), "ControlNet weights")
        return "diffusers folder"
    shapes = tensor_shapes(path)
    stem = shapes.get("control_model.input_hint_block.0.weight", shapes.get("input_hint_block.0.weight"))
    if stem is None:
        raise CapHumanError(f"'{path}' has no ControlNet hint stem (control_model.input_hint_block.0.weight); it is not a ControlNet file.")
    if len(stem) != 4 or stem[1] != 3:
        raise CapHumanError(f"'{path}' is a ControlNet for {stem[1] if len(stem) == 4 else '?'}-channel maps, not a 3-channel OpenPose map.")
    return f"{len(shapes)} tensors"


def check_plain_file(path: Path) -> str:
    if not path.is_file() or path.stat().st_size == 0:
        raise CapHumanError(f"'{path}' is empty or not a file.")
    return f"{path.stat().st_size} bytes"


VALIDATORS: dict[str, Callable[[Path], str]] = {
    "sd_checkpoint": check_sd_checkpoint,
    "vae": check_vae,
    "clip_folder": check_clip_folder,
    "caphuman_adapter": check_caphuman_adapter,
    "caphuman_original": check_caphuman_original,
    "facenet": check_facenet,
    "onnx": check_onnx,
    "bisenet": check_bisenet,
    "deca_model": check_deca_model,
    "flame_model": check_flame_model,
    "flame_texture": check_flame_texture,
    "body_controlnet": check_body_controlnet,
    "file": check_plain_file,
}
# DECA/FLAME files are also found directly in the weights folder (DecaAssetPaths.locate).
_FLAT_FALLBACK_KINDS = ("deca_model", "flame_model", "flame_texture", "file")


def check_entry(entry: WeightEntry, weights_dir: str | os.PathLike, config: Any | None = None) -> FileCheck:
    """Validate one entry; never raises for a user-side problem (returns a ``malformed`` check)."""
    path = entry_path(entry, weights_dir, config)
    if path is None:
        return FileCheck(entry.name, None, STATUS_UNUSED, f"{entry.config_key} is null in the config")
    if not path.exists() and entry.kind in _FLAT_FALLBACK_KINDS and (Path(weights_dir) / path.name).exists():
        path = Path(weights_dir) / path.name
    if not path.exists():
        return FileCheck(entry.name, path, STATUS_MISSING, f"get it from {entry.source}")
    if entry.size is not None and path.is_file() and path.stat().st_size != entry.size:
        return FileCheck(entry.name, path, STATUS_MALFORMED, f"size {path.stat().st_size} bytes, expected {entry.size}")
    validator = VALIDATORS.get(entry.kind)
    if validator is None:
        return FileCheck(entry.name, path, STATUS_MALFORMED, f"unknown kind '{entry.kind}' in the manifest")
    try:
        detail = validator(path)
    except MissingWeightsError as error:
        return FileCheck(entry.name, path, STATUS_MISSING, str(error))
    except CapHumanError as error:
        return FileCheck(entry.name, path, STATUS_MALFORMED, str(error))
    except Exception as error:  # a damaged file can trip any library; report it, never a traceback
        logger.debug("Validating %s failed", path, exc_info=True)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return FileCheck(entry.name, path, STATUS_MALFORMED, f"{type(error).__name__}: {reason}"[:300])
    return FileCheck(entry.name, path, STATUS_PRESENT, detail)


@dataclass(frozen=True)
class CapabilityStatus:
    name: str
    description: str
    available: bool
    blocking: tuple[str, ...]


def capability_status(entries: Mapping[str, WeightEntry], checks: Mapping[str, FileCheck]) -> list[CapabilityStatus]:
    """Each capability is available when every entry that lists it is present (or switched off)."""
    statuses = []
    for name, description in CAPABILITIES.items():
        blocking = tuple(
            entry.name
            for entry in entries.values()
            if name in entry.needed_by and checks[entry.name].status not in (STATUS_PRESENT, STATUS_UNUSED)
        )
        statuses.append(CapabilityStatus(name, description, not blocking, blocking))
    return statuses
