"""Load the SD 1.5 backbone and CLIP vision from user-supplied files, offline.

Stable Diffusion comes as a diffusers folder (model_index.json, unet/, vae/, text_encoder/,
tokenizer/) or as one original-layout .safetensors/.ckpt (Realistic Vision and most fine-tunes).
For a single file, the architecture configs are the published SD 1.5 ones written in
:mod:`caphuman.models.architectures` (no hub access), the weights are converted by diffusers'
single-file loaders, and the tokenizer comes from the CLIP ViT-L/14 folder (the same
tokenizer SD 1.5 uses).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionModel

from caphuman.config import ModelConfig
from caphuman.errors import CapHumanError, MissingWeightsError
from caphuman.models.architectures import SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE
from caphuman.models.backbone import Backbone, clip_image_processor
from caphuman.schedulers import SD15_SCHEDULE

logger = logging.getLogger(__name__)

SD_SOURCE = "any SD 1.5 checkpoint, e.g. Realistic Vision V3.0 (https://civitai.com/models/4201) or stable-diffusion-v1-5"
CLIP_SOURCE = "https://huggingface.co/openai/clip-vit-large-patch14 (the whole folder)"
VAE_SOURCE = "https://huggingface.co/stabilityai/sd-vae-ft-mse-original (vae-ft-mse-840000-ema-pruned)"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


def _resolve(weights_dir: str | Path, relative: str) -> Path:
    path = Path(relative)
    return path if path.is_absolute() else Path(weights_dir) / path


def _write_single_file_configs(directory: Path) -> Path:
    """A diffusers-style config folder for SD 1.5 (what from_single_file reads as `config`)."""
    for subfolder, config, class_name in (("unet", SD15_UNET, "UNet2DConditionModel"), ("vae", SD15_VAE, "AutoencoderKL")):
        (directory / subfolder).mkdir(parents=True, exist_ok=True)
        (directory / subfolder / "config.json").write_text(json.dumps({"_class_name": class_name, **config}))
    (directory / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return directory


def load_clip_vision(path: Path) -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    if not path.is_dir():
        raise MissingWeightsError("CLIP ViT-L/14 folder", str(path), CLIP_SOURCE)
    model = CLIPVisionModel.from_pretrained(path, local_files_only=True)
    processor_file = path / "preprocessor_config.json"
    processor = (
        CLIPImageProcessor.from_pretrained(path, local_files_only=True)
        if processor_file.is_file()
        else clip_image_processor(model.config.image_size)
    )
    return model, processor


def load_vae(path: Path) -> AutoencoderKL:
    if not path.exists():
        raise MissingWeightsError("VAE", str(path), VAE_SOURCE + "; or set model.vae: null to keep the checkpoint's VAE")
    if path.is_dir():
        return AutoencoderKL.from_pretrained(path, local_files_only=True)
    with tempfile.TemporaryDirectory() as configs:
        _write_single_file_configs(Path(configs))
        return AutoencoderKL.from_single_file(str(path), config=configs, subfolder="vae", local_files_only=True)


def load_sd15_backbone(model: ModelConfig, weights_dir: str | Path) -> Backbone:
    """UNet, VAE, text encoder, tokenizer (SD) + CLIP vision, from files under ``weights_dir``."""
    sd_path = _resolve(weights_dir, model.stable_diffusion)
    clip_path = _resolve(weights_dir, model.clip_vision)
    if not sd_path.exists():
        raise MissingWeightsError("Stable Diffusion 1.5 checkpoint", str(sd_path), SD_SOURCE)
    image_encoder, image_processor = load_clip_vision(clip_path)

    if sd_path.is_dir():
        if not (sd_path / "model_index.json").is_file():
            raise CapHumanError(f"'{sd_path}' is a folder but not a diffusers pipeline (no model_index.json).")
        unet = UNet2DConditionModel.from_pretrained(sd_path, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(sd_path, subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(sd_path, subfolder="text_encoder", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(sd_path, subfolder="tokenizer", local_files_only=True)
        scheduler_file = sd_path / "scheduler" / "scheduler_config.json"
        scheduler_config = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else dict(SD15_SCHEDULE)
    elif sd_path.suffix in SINGLE_FILE_SUFFIXES:
        unet, vae, text_encoder = _load_single_file(sd_path)
        tokenizer = CLIPTokenizer.from_pretrained(clip_path, local_files_only=True)
        scheduler_config = dict(SD15_SCHEDULE)
    else:
        raise CapHumanError(f"'{sd_path}' is neither a diffusers folder nor one of {', '.join(SINGLE_FILE_SUFFIXES)}.")

    if model.vae is not None:
        vae = load_vae(_resolve(weights_dir, model.vae))
    return Backbone(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        image_processor=image_processor,
        scheduler_config=scheduler_config,
    ).freeze()


def _load_single_file(path: Path) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """One original-layout SD 1.5 file -> diffusers UNet, VAE and CLIP text encoder."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, load_single_file_checkpoint

    try:
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    except Exception as error:  # a truncated or foreign file: say which, not a traceback
        raise CapHumanError(f"Cannot read the Stable Diffusion checkpoint '{path}': {error}") from None
    with tempfile.TemporaryDirectory() as configs:
        _write_single_file_configs(Path(configs))
        unet = UNet2DConditionModel.from_single_file(str(path), config=configs, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_single_file(str(path), config=configs, subfolder="vae", local_files_only=True)
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER))
    text_state = convert_ldm_clip_checkpoint(checkpoint)
    missing, unexpected = text_encoder.load_state_dict(text_state, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise CapHumanError(f"'{path}' has an unexpected text encoder layout (missing {missing[:3]}, unexpected {unexpected[:3]}).")
    del checkpoint
    return unet, vae, text_encoder
