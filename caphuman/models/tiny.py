"""Randomly initialised, seeded backbones built locally: tiny ones with CapHuman's real architecture
(tests, the tiny config) and the full-size SD 1.5 one (benchmarks).

The tiny ones follow diffusers' own test components (a few channels, cross-attention width 32, 32-wide
CLIP), but keep SD's 8x VAE downsampling so the hint, latent and image sizes relate as in the
real model. Built locally; nothing is downloaded.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModel

from caphuman.config import TinyModelConfig
from caphuman.models.architectures import CLIP_VIT_L14_VISION, SD15_TEXT_ENCODER, SD15_UNET, SD15_VAE
from caphuman.models.backbone import Backbone, clip_image_processor
from caphuman.schedulers import SD15_SCHEDULE

TOKENIZER_MAX_LENGTH = 77


def _byte_characters() -> list[str]:
    """The 256 printable characters that byte-level BPE uses for the bytes 0..255."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    characters, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            characters.append(chr(byte))
        else:
            characters.append(chr(256 + shifted))
            shifted += 1
    return characters


def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer (514 tokens, no merges): real CLIP tokenisation rules
    (lower-casing, word-end markers, start/end tokens, 77-token padding) without a vocab download."""
    characters = _byte_characters()
    vocab = {character: index for index, character in enumerate(characters)}
    vocab.update({character + "</w>": len(characters) + index for index, character in enumerate(characters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENIZER_MAX_LENGTH)


def tiny_backbone(config: TinyModelConfig | None = None) -> Backbone:
    """Build the tiny UNet, VAE (8x downsampling), CLIP text and vision models, seeded."""
    config = config or TinyModelConfig()
    channels = tuple(config.block_out_channels)
    depth = len(channels)
    tokenizer = tiny_tokenizer()
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(config.init_seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=channels,
            layers_per_block=config.layers_per_block,
            down_block_types=("CrossAttnDownBlock2D",) * (depth - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (depth - 1),
            cross_attention_dim=config.cross_attention_dim,
            attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_num_groups,
        )
        torch.manual_seed(config.init_seed + 1)
        # Four levels give SD's 8x downsampling; widths stay tiny.
        vae = AutoencoderKL(
            sample_size=64,
            in_channels=3,
            out_channels=3,
            block_out_channels=(channels[0],) * 4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=config.norm_num_groups,
            scaling_factor=0.18215,
        )
        torch.manual_seed(config.init_seed + 2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=config.text_hidden_size,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=TOKENIZER_MAX_LENGTH,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                projection_dim=config.text_hidden_size,
            )
        )
        torch.manual_seed(config.init_seed + 3)
        image_encoder = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=config.vision_hidden_size,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=config.vision_image_size,
                patch_size=config.vision_patch_size,
                projection_dim=config.vision_hidden_size,
            )
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return Backbone(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        feature_extractor=clip_image_processor(config.vision_image_size),
        scheduler_config=dict(SD15_SCHEDULE),
    ).freeze()


def random_sd15_backbone(seed: int = 0, with_clip_vision: bool = True) -> Backbone:
    """The full-size SD 1.5 + CLIP ViT-L/14 architecture with random weights (for benchmarks).

    The tokenizer is the tiny character-level one: tokenisation cost does not matter to timing.
    """
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
