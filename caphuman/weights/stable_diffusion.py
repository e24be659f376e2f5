"""Load the SD 1.5 backbone and CLIP vision from user-supplied files, offline.

Stable Diffusion comes as a diffusers folder (model_index.json, unet/, vae/, text_encoder/,
tokenizer/) or as one original-layout .safetensors/.ckpt (Realistic Vision and most
fine-tunes): ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and
``cond_stage_model.transformer.*`` (CLIP text encoder). For a single file:

- the architecture is the published SD 1.5 one (:mod:`caphuman.models.architectures`) unless an
  :class:`SDArchitecture` is passed (tests build tiny files);
- keys are converted by diffusers' own ldm -> diffusers converters (see
  :mod:`caphuman.weights.ldm_layout`), and names and shapes are checked by
  :func:`caphuman.weights.strict.load_checked`;
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
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

from caphuman.config import ModelConfig
from caphuman.errors import CapHumanError
from caphuman.models.architectures import SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE
from caphuman.models.backbone import Backbone, clip_image_processor
from caphuman.schedulers import SD15_SCHEDULE
from caphuman.weights.files import read_state_dict, read_torch_file, unwrap_state_dict
from caphuman.weights.ldm_layout import (
    LDM_TEXT_PREFIX,
    LDM_UNET_PREFIX,
    LDM_VAE_PREFIX,
    VAE_FILE_PREFIXES,
    text_encoder_from_ldm,
    unet_from_ldm,
    vae_from_ldm,
)
from caphuman.weights.registry import missing_weights, weights_path
from caphuman.weights.strict import load_checked

logger = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# Manifest entries (checkpoints/manifest.yaml) of the files read here.
SD_ENTRY, VAE_ENTRY, CLIP_ENTRY = "stable_diffusion", "vae", "clip_vision"


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
    def from_models(cls, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel) -> SDArchitecture:
        return cls(unet=dict(unet.config), vae=dict(vae.config), text_encoder=text_encoder.config.to_dict())


# ------------------------------------------------------------------------------------------
# Building modules without allocating their weights


def empty_module(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module whose parameters live on the meta device (buffers stay real and small)."""
    with init_empty_weights(include_buffers=False):
        return build()


def assign_checked(module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str, dtype: torch.dtype) -> nn.Module:
    """Check names and shapes, then make ``state``'s tensors (cast to ``dtype``) the parameters
    of ``module`` (built by :func:`empty_module`), without a copy; eval mode.

    Raises:
        CapHumanError: naming the file and the first missing, unexpected or mis-shaped keys.
    """
    return load_checked(module, state, path, what, dtype=dtype, assign=True).eval()


def _build_unet(architecture: SDArchitecture) -> UNet2DConditionModel:
    return empty_module(lambda: UNet2DConditionModel.from_config(dict(architecture.unet)))


def _build_vae(architecture: SDArchitecture) -> AutoencoderKL:
    return empty_module(lambda: AutoencoderKL.from_config(dict(architecture.vae)))


def _build_text_encoder(architecture: SDArchitecture) -> CLIPTextModel:
    config = CLIPTextConfig.from_dict(dict(architecture.text_encoder))
    return empty_module(lambda: CLIPTextModel(config))


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
        raise missing_weights(SD_ENTRY, "Stable Diffusion 1.5 checkpoint", path)
    source = _SingleFile(path)
    try:
        unet_state = unet_from_ldm(source.component(lambda key: key.startswith(LDM_UNET_PREFIX)), architecture.unet)
        unet = assign_checked(_build_unet(architecture), unet_state, path, "SD 1.5 UNet", dtype)
        del unet_state
        vae_state = vae_from_ldm(source.component(lambda key: key.startswith(LDM_VAE_PREFIX)), architecture.vae)
        vae = assign_checked(_build_vae(architecture), vae_state, path, "SD 1.5 VAE", dtype)
        del vae_state
        text_encoder = _build_text_encoder(architecture)
        text_state = text_encoder_from_ldm(source.component(lambda key: key.startswith(LDM_TEXT_PREFIX)), text_encoder)
        text_encoder = assign_checked(text_encoder, text_state, path, "SD 1.5 text encoder", dtype)
    finally:
        source.release()
    return unet, vae, text_encoder


def load_vae(path: Path, architecture: SDArchitecture | None = None, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """A separate VAE: a diffusers folder, or one file (stand-alone ``encoder.*`` keys or
    ``first_stage_model.*`` keys)."""
    if not path.exists():
        raise missing_weights(VAE_ENTRY, "VAE", path, hint="; or set model.vae: null to keep the checkpoint's VAE")
    if path.is_dir():
        return from_pretrained_offline(AutoencoderKL, path, "VAE")
    architecture = architecture or SDArchitecture()
    state = read_state_dict(path, lambda key: key.startswith(LDM_VAE_PREFIX) or key.startswith(VAE_FILE_PREFIXES))
    return assign_checked(_build_vae(architecture), vae_from_ldm(state, architecture.vae), path, "SD 1.5 VAE", dtype)


# ------------------------------------------------------------------------------------------
# Folders


def from_pretrained_offline(cls: Any, path: Path, what: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(path, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CapHumanError(f"Cannot load the {what} from '{path}': {reason}") from None


def load_clip_vision(path: Path) -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    """CLIP vision tower + preprocessing from a transformers folder (CLIPModel or CLIPVisionModel)."""
    if not path.is_dir():
        raise missing_weights(CLIP_ENTRY, "CLIP ViT-L/14 folder", path)
    model = from_pretrained_offline(CLIPVisionModel, path, "CLIP vision model")
    processor = (
        from_pretrained_offline(CLIPImageProcessor, path, "CLIP image processor")
        if (path / "preprocessor_config.json").is_file()
        else clip_image_processor(model.config.image_size)
    )
    return model.eval(), processor


def load_clip_tokenizer(path: Path) -> CLIPTokenizer:
    if not path.is_dir():
        raise missing_weights(CLIP_ENTRY, "CLIP ViT-L/14 folder (its tokenizer)", path)
    return from_pretrained_offline(CLIPTokenizer, path, "CLIP tokenizer")


def load_diffusers_folder(path: Path) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, dict[str, Any]]:
    """A diffusers SD pipeline folder: UNet, VAE, text encoder, tokenizer and scheduler config."""
    if not (path / "model_index.json").is_file():
        raise CapHumanError(f"'{path}' is a folder but not a diffusers pipeline (no model_index.json).")
    unet = from_pretrained_offline(UNet2DConditionModel, path, "UNet", subfolder="unet")
    vae = from_pretrained_offline(AutoencoderKL, path, "VAE", subfolder="vae")
    text_encoder = from_pretrained_offline(CLIPTextModel, path, "text encoder", subfolder="text_encoder")
    tokenizer = from_pretrained_offline(CLIPTokenizer, path, "tokenizer", subfolder="tokenizer")
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else dict(SD15_SCHEDULE)
    return unet, vae, text_encoder, tokenizer, scheduler_config


def load_sd15_backbone(model: ModelConfig, weights_dir: str | Path, architecture: SDArchitecture | None = None) -> Backbone:
    """UNet, VAE, text encoder, tokenizer (SD) + CLIP vision, from files under ``weights_dir``.

    ``architecture`` only matters for single files (folders carry their configs); None means
    the published SD 1.5 architecture.
    """
    sd_path = weights_path(weights_dir, model.stable_diffusion)
    clip_path = weights_path(weights_dir, model.clip_vision)
    if not sd_path.exists():
        raise missing_weights(SD_ENTRY, "Stable Diffusion 1.5 checkpoint", sd_path)
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
        vae = load_vae(weights_path(weights_dir, model.vae), architecture)
    return Backbone(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        scheduler_config=scheduler_config,
    ).freeze()
