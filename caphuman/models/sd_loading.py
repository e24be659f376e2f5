"""Load the SD 1.5 backbone and CLIP vision from user-supplied files, offline.

Stable Diffusion comes as a diffusers folder (model_index.json, unet/, vae/, text_encoder/,
tokenizer/) or as one original-layout .safetensors/.ckpt (Realistic Vision and most
fine-tunes): ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
``cond_stage_model.transformer.*`` (CLIP text encoder). For a single file:

- the architecture is the published SD 1.5 one (:mod:`caphuman.models.architectures`) unless an
  :class:`SDArchitecture` is passed (tests build tiny files);
- keys are converted by diffusers' own ldm -> diffusers converters
  (``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``);
- memory: the file is read one component at a time (safetensors: plain reads of that
  component's tensors; .ckpt: a memory-mapped ``torch.load(weights_only=True)``), the module is
  built with empty (meta) parameters and the converted tensors are assigned to it, so no
  second copy of the weights is made (a dtype cast, e.g. an fp16 file loaded as fp32, holds one
  component in both dtypes until the cast is done);
- the tokenizer comes from the CLIP ViT-L/14 folder (the same tokenizer SD 1.5 uses).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

from caphuman.config import ModelConfig
from caphuman.errors import CapHumanError, MissingWeightsError
from caphuman.models.architectures import SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE
from caphuman.models.backbone import Backbone, clip_image_processor
from caphuman.schedulers import SD15_SCHEDULE
from caphuman.weights import read_state_dict, read_torch_file, unwrap_state_dict

logger = logging.getLogger(__name__)

SD_SOURCE = "any SD 1.5 checkpoint, e.g. Realistic Vision V3.0 (https://civitai.com/models/4201) or stable-diffusion-v1-5"
CLIP_SOURCE = "https://huggingface.co/openai/clip-vit-large-patch14 (the whole folder)"
VAE_SOURCE = "https://huggingface.co/stabilityai/sd-vae-ft-mse-original (vae-ft-mse-840000-ema-pruned)"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# Prefixes of the original (CompVis ldm) single-file layout.
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.transformer."
# The layout of a stand-alone VAE file (vae-ft-mse-840000-ema-pruned): no prefix.
VAE_FILE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# transformers >= 5 keeps the CLIP text weights without the `text_model.` level the files use.
_HF_TEXT_MODEL_PREFIX = "text_model."


@dataclass(frozen=True)
class SDArchitecture:
    """Configs of the three SD components: diffusers UNet/VAE configs and a CLIP text config.

    The default is the published SD 1.5 architecture; tests and benchmarks pass smaller ones
    (e.g. :meth:`from_models` of the tiny backbone).
    """

    unet: Mapping[str, Any] = field(default_factory=lambda: dict(SD15_UNET))
    vae: Mapping[str, Any] = field(default_factory=lambda: dict(SD15_VAE))
    text_encoder: Mapping[str, Any] = field(default_factory=lambda: dict(SD15_TEXT_ENCODER))

    @classmethod
    def from_models(cls, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel) -> "SDArchitecture":
        return cls(unet=dict(unet.config), vae=dict(vae.config), text_encoder=text_encoder.config.to_dict())


def _resolve(weights_dir: str | Path, relative: str) -> Path:
    path = Path(relative)
    return path if path.is_absolute() else Path(weights_dir) / path


# ------------------------------------------------------------------------------------------
# Building modules without allocating their weights


def _empty_module(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module whose parameters live on the meta device (buffers stay real and small)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def _assign_state_dict(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str, dtype: torch.dtype) -> nn.Module:
    """Check names and shapes, then make ``state``'s tensors the module's parameters (no copy).

    Raises:
        CapHumanError: naming the file and the first missing, unexpected or mis-shaped keys.
    """
    expected = module.state_dict()
    missing = sorted(key for key in expected if key not in state)
    unexpected = sorted(key for key in state if key not in expected)
    mis_shaped = sorted(
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in state
        if key in expected and tuple(state[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or mis_shaped:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} ({len(missing)})")
        if unexpected:
            problems.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)})")
        if mis_shaped:
            problems.append(f"shape mismatch {', '.join(mis_shaped[:3])} (file vs architecture)")
        raise CapHumanError(f"'{path}' does not hold an SD 1.5 {what} of the expected architecture: {'; '.join(problems)}.")
    # Floating tensors take the load dtype; .to() returns the same tensor when it already has it.
    typed = {key: (value.to(dtype) if value.is_floating_point() else value).contiguous() for key, value in state.items()}
    module.load_state_dict(typed, strict=True, assign=True)
    return module.eval()


def _build_unet(architecture: SDArchitecture) -> UNet2DConditionModel:
    return _empty_module(lambda: UNet2DConditionModel.from_config(dict(architecture.unet)))


def _build_vae(architecture: SDArchitecture) -> AutoencoderKL:
    return _empty_module(lambda: AutoencoderKL.from_config(dict(architecture.vae)))


def _build_text_encoder(architecture: SDArchitecture) -> CLIPTextModel:
    config = CLIPTextConfig.from_dict(dict(architecture.text_encoder))
    return _empty_module(lambda: CLIPTextModel(config))


def _strip_text_model_prefix(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """Match the file's ``text_model.*`` keys (or pre-2022 keys without it) to the module's keys."""
    wants_prefix = any(key.startswith(_HF_TEXT_MODEL_PREFIX) for key in module.state_dict())
    result = {}
    for key, value in state.items():
        bare = key.removeprefix(_HF_TEXT_MODEL_PREFIX)
        result[_HF_TEXT_MODEL_PREFIX + bare if wants_prefix else bare] = value
    # position_ids is a buffer some exports kept; the module builds its own.
    return {key: value for key, value in result.items() if not key.endswith("position_ids")}


# ------------------------------------------------------------------------------------------
# Reading one component of a single file


class _SingleFile:
    """One original-layout file, read a component at a time.

    A .ckpt is loaded once, memory-mapped (only the pages a component touches are read); a
    .safetensors is re-opened per component and only that component's tensors are read.
    """

    def __init__(self, path: Path):
        self.path = path
        self._torch_state: dict[str, torch.Tensor] | None = None
        if path.suffix != ".safetensors":
            self._torch_state = unwrap_state_dict(read_torch_file(path), path)

    def component(self, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
        if self._torch_state is not None:
            return {key: value for key, value in self._torch_state.items() if keep(key)}
        return read_state_dict(self.path, keep)

    def release(self) -> None:
        self._torch_state = None


def _convert_unet(state: dict[str, torch.Tensor], architecture: SDArchitecture) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(state, dict(architecture.unet))


def _convert_vae(state: dict[str, torch.Tensor], architecture: SDArchitecture) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state, dict(architecture.vae))


def _convert_text(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    return convert_ldm_clip_checkpoint(state)


def load_single_file(
    path: str | Path, architecture: SDArchitecture | None = None, dtype: torch.dtype = torch.float32
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """One original-layout SD 1.5 file -> diffusers UNet, VAE and CLIP text encoder (eval mode).

    Raises:
        MissingWeightsError: no file at ``path``.
        CapHumanError: unreadable/truncated file, a pickle weights_only refuses (with a
            conversion hint), or keys/shapes that do not fit the architecture (naming the file).
    """
    path = Path(path)
    architecture = architecture or SDArchitecture()
    if not path.is_file():
        raise MissingWeightsError("Stable Diffusion 1.5 checkpoint", str(path), SD_SOURCE)
    source = _SingleFile(path)
    try:
        unet_state = _convert_unet(source.component(lambda key: key.startswith(LDM_UNET_PREFIX)), architecture)
        unet = _assign_state_dict(_build_unet(architecture), unet_state, path, "UNet", dtype)
        del unet_state
        vae_state = _convert_vae(source.component(lambda key: key.startswith(LDM_VAE_PREFIX)), architecture)
        vae = _assign_state_dict(_build_vae(architecture), vae_state, path, "VAE", dtype)
        del vae_state
        text_encoder = _build_text_encoder(architecture)
        text_state = _strip_text_model_prefix(_convert_text(source.component(lambda key: key.startswith(LDM_TEXT_PREFIX))), text_encoder)
        text_encoder = _assign_state_dict(text_encoder, text_state, path, "text encoder", dtype)
    finally:
        source.release()
    return unet, vae, text_encoder


def load_vae(path: Path, architecture: SDArchitecture | None = None, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """A separate VAE: a diffusers folder, or one file (stand-alone ``encoder.*`` keys or
    ``first_stage_model.*`` keys)."""
    if not path.exists():
        raise MissingWeightsError("VAE", str(path), VAE_SOURCE + "; or set model.vae: null to keep the checkpoint's VAE")
    if path.is_dir():
        return _from_pretrained(AutoencoderKL, path, "VAE")
    architecture = architecture or SDArchitecture()
    state = read_state_dict(
        path,
        lambda key: key.startswith(LDM_VAE_PREFIX) or key.startswith(VAE_FILE_PREFIXES),
        what="VAE",
        source=VAE_SOURCE,
    )
    return _assign_state_dict(_build_vae(architecture), _convert_vae(state, architecture), path, "VAE", dtype)


# ------------------------------------------------------------------------------------------
# Folders


def _from_pretrained(cls: Any, path: Path, what: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(path, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CapHumanError(f"Cannot load the {what} from '{path}': {reason}") from None


def load_clip_vision(path: Path) -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    """CLIP vision tower + preprocessing from a transformers folder (CLIPModel or CLIPVisionModel)."""
    if not path.is_dir():
        raise MissingWeightsError("CLIP ViT-L/14 folder", str(path), CLIP_SOURCE)
    model = _from_pretrained(CLIPVisionModel, path, "CLIP vision model")
    processor = (
        _from_pretrained(CLIPImageProcessor, path, "CLIP image processor")
        if (path / "preprocessor_config.json").is_file()
        else clip_image_processor(model.config.image_size)
    )
    return model.eval(), processor


def load_clip_tokenizer(path: Path) -> CLIPTokenizer:
    if not path.is_dir():
        raise MissingWeightsError("CLIP ViT-L/14 folder (its tokenizer)", str(path), CLIP_SOURCE)
    return _from_pretrained(CLIPTokenizer, path, "CLIP tokenizer")


def load_diffusers_folder(path: Path) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, dict[str, Any]]:
    """A diffusers SD pipeline folder: UNet, VAE, text encoder, tokenizer and scheduler config."""
    if not (path / "model_index.json").is_file():
        raise CapHumanError(f"'{path}' is a folder but not a diffusers pipeline (no model_index.json).")
    unet = _from_pretrained(UNet2DConditionModel, path, "UNet", subfolder="unet")
    vae = _from_pretrained(AutoencoderKL, path, "VAE", subfolder="vae")
    text_encoder = _from_pretrained(CLIPTextModel, path, "text encoder", subfolder="text_encoder")
    tokenizer = _from_pretrained(CLIPTokenizer, path, "tokenizer", subfolder="tokenizer")
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else dict(SD15_SCHEDULE)
    return unet, vae, text_encoder, tokenizer, scheduler_config


def load_sd15_backbone(model: ModelConfig, weights_dir: str | Path, architecture: SDArchitecture | None = None) -> Backbone:
    """UNet, VAE, text encoder, tokenizer (SD) + CLIP vision, from files under ``weights_dir``.

    ``architecture`` only matters for single files (folders carry their configs); None means
    the published SD 1.5 architecture.
    """
    sd_path = _resolve(weights_dir, model.stable_diffusion)
    clip_path = _resolve(weights_dir, model.clip_vision)
    if not sd_path.exists():
        raise MissingWeightsError("Stable Diffusion 1.5 checkpoint", str(sd_path), SD_SOURCE)
    image_encoder, feature_extractor = load_clip_vision(clip_path)

    if sd_path.is_dir():
        unet, vae, text_encoder, tokenizer, scheduler_config = load_diffusers_folder(sd_path)
    elif sd_path.suffix in SINGLE_FILE_SUFFIXES:
        tokenizer = load_clip_tokenizer(clip_path)
        unet, vae, text_encoder = load_single_file(sd_path, architecture)
        scheduler_config = dict(SD15_SCHEDULE)
    else:
        raise CapHumanError(f"'{sd_path}' is neither a diffusers folder nor one of {', '.join(SINGLE_FILE_SUFFIXES)}.")

    if model.vae is not None:
        vae = load_vae(_resolve(weights_dir, model.vae), architecture)
    return Backbone(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        scheduler_config=scheduler_config,
    ).freeze()
