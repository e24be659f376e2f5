"""The frozen backbone: SD 1.5 (UNet, VAE, text encoder, tokenizer, schedule) and CLIP vision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

from caphuman.models.architectures import CLIP_VIT_L14_VISION, SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE
from caphuman.schedulers import SD15_SCHEDULE


@dataclass
class Backbone:
    """Everything CapHuman keeps frozen. ``scheduler_config`` is the training noise schedule."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    image_encoder: CLIPVisionModel
    feature_extractor: CLIPImageProcessor  # CLIP's preprocessing of the reference face (diffusers' name)
    scheduler_config: dict[str, Any]

    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "unet": self.unet,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "image_encoder": self.image_encoder,
        }

    def freeze(self) -> "Backbone":
        for module in self.modules().values():
            module.requires_grad_(False)
            module.eval()
        return self


def clip_image_processor(image_size: int) -> CLIPImageProcessor:
    """CLIP's published preprocessing (shortest side resize, centre crop, OpenAI mean/std)."""
    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_normalize=True,
    )


def random_sd15_backbone(seed: int = 0, with_clip_vision: bool = True) -> Backbone:
    """The full-size SD 1.5 + CLIP ViT-L/14 architecture with random weights (for benchmarks).

    The tokenizer is the tiny character-level one: tokenisation cost does not matter to timing.
    """
    from caphuman.models.tiny import tiny_tokenizer
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(**SD15_VAE)
    tokenizer = tiny_tokenizer()
    text_config = dict(SD15_TEXT_ENCODER, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    vision_config = CLIP_VIT_L14_VISION if with_clip_vision else dict(CLIP_VIT_L14_VISION, num_hidden_layers=1)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(**vision_config))
    return Backbone(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        feature_extractor=clip_image_processor(CLIP_VIT_L14_VISION["image_size"]),
        scheduler_config=dict(SD15_SCHEDULE),
    ).freeze()
