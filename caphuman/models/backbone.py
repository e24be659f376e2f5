"""The frozen backbone: SD 1.5 (UNet, VAE, text encoder, tokenizer, schedule) and CLIP vision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModel


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

    def freeze(self) -> Backbone:
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
