"""``caphuman doctor``'s checks: is each manifest file there and readable, and which
capabilities does that leave?

:func:`check_entry` validates one :class:`~caphuman.weights.registry.WeightEntry` with the
loaders the real path uses (or, for multi-gigabyte files, by reading tensor names and shapes
only) and never raises: a problem becomes a ``malformed`` :class:`FileCheck` with one sentence.
:func:`capability_status` turns the checks into the capability report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import init_empty_weights

from caphuman.errors import CapHumanError, MissingWeightsError
from caphuman.faces.arcface_onnx import ArcFaceOnnxRecognizer
from caphuman.faces.bisenet import FaceParser
from caphuman.faces.facenet import FaceNetRecognizer
from caphuman.head.deca.encoder import DecaCoarseEncoder
from caphuman.head.deca.files import load_deca_encoder_state, load_flame_model, load_flame_texture
from caphuman.models.adapter import METADATA_FILE
from caphuman.weights.files import read_safetensors_header, tensor_shapes
from caphuman.weights.ldm_layout import LDM_TEXT_PREFIX, LDM_UNET_PREFIX, LDM_VAE_PREFIX
from caphuman.weights.original_checkpoint import ORIGINAL_REQUIRED_KEYS
from caphuman.weights.registry import WeightEntry, find_entry_file, weights_entry
from caphuman.weights.strict import check_state_dict, expected_shapes, is_batchnorm_counter

logger = logging.getLogger(__name__)

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
    if "encoder.conv_in.weight" in shapes or LDM_VAE_PREFIX + "encoder.conv_in.weight" in shapes:
        return f"{len(shapes)} tensors"
    raise CapHumanError(f"'{path}' does not look like a VAE: no encoder.conv_in.weight.")


def check_clip_folder(path: Path) -> str:
    if not path.is_dir():
        raise CapHumanError(f"'{path}' should be a folder (the files of {weights_entry('clip_vision').hf_repo}).")
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
    shapes = tensor_shapes(path)
    _require_keys(path, shapes, ORIGINAL_REQUIRED_KEYS, "the original caphuman.ckpt")
    return f"{len(shapes)} tensors"


def check_facenet(path: Path) -> str:
    FaceNetRecognizer.from_file(path, device="cpu")
    return "loads (InceptionResnetV1)"


def check_onnx(path: Path) -> str:
    ArcFaceOnnxRecognizer.from_file(path, device="cpu")
    return "loads (onnxruntime)"


def check_bisenet(path: Path) -> str:
    FaceParser.from_file(path, device="cpu")
    return "loads (BiSeNet)"


def check_deca_model(path: Path) -> str:
    state = load_deca_encoder_state(path)
    with init_empty_weights():  # names and shapes only; no weights are allocated
        expected = expected_shapes(DecaCoarseEncoder())
    check_state_dict(expected, state, path, "DECA coarse encoder (E_flame)", may_lack=is_batchnorm_counter, ignore_unexpected=True)
    return f"E_flame: {len(state)} tensors"


def check_flame_model(path: Path) -> str:
    model = load_flame_model(path)
    return f"{model.v_template.shape[0]} vertices"


def check_flame_texture(path: Path) -> str:
    template = path.parent / Path(weights_entry("head_template").path).name
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


def check_entry(entry: WeightEntry, weights_dir: str | os.PathLike, config: Any | None = None) -> FileCheck:
    """Validate one entry; never raises for a user-side problem (returns a ``malformed`` check)."""
    path = find_entry_file(entry, weights_dir, config)
    if path is None:
        return FileCheck(entry.name, None, STATUS_UNUSED, f"{entry.config_key} is null in the config")
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
            entry.name for entry in entries.values() if name in entry.needed_by and checks[entry.name].status not in (STATUS_PRESENT, STATUS_UNUSED)
        )
        statuses.append(CapabilityStatus(name, description, not blocking, blocking))
    return statuses
