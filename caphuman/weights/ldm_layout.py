"""The original (CompVis ldm) names of SD 1.5's parts and diffusers' names, both ways, in one place.

An original single file (Realistic Vision, the SD 1.5 release, caphuman.ckpt's frozen parts)
keeps the UNet under ``model.diffusion_model.``, the VAE under ``first_stage_model.`` and the CLIP
text encoder under ``cond_stage_model.transformer.``; a ControlNet file (and CapFace inside
caphuman.ckpt) keeps the ldm ControlNet layout under ``control_model.``.

- ldm -> diffusers: diffusers' own single-file converters (``convert_ldm_unet_checkpoint``,
  ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_controlnet_checkpoint``:
  what ``from_single_file`` runs), wrapped by the ``*_from_ldm`` functions;
- diffusers -> ldm: the ``ldm_*_state_dict`` functions below, the inverse of those converters,
  which export our models to the original layouts (tests build original-layout files with them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from torch import nn

# Prefixes of the original single-file layout.
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_STAGE_PREFIX = "cond_stage_model."
LDM_TEXT_PREFIX = LDM_TEXT_STAGE_PREFIX + "transformer."
LDM_CONTROLNET_PREFIX = "control_model."
# The layout of a stand-alone VAE file (vae-ft-mse-840000-ema-pruned): no prefix.
VAE_FILE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# CapFace's face-mask conv (our ``face_mask_head``) inside the ldm ControlNet layout (the
# reference code's ``mask_predict = nn.Sequential(conv)``): not a ControlNet key diffusers knows.
LDM_MASK_HEAD = "mask_predict.0."
# transformers >= 5 keeps the CLIP text weights without the `text_model.` level the files use.
_HF_TEXT_MODEL_PREFIX = "text_model."


# ------------------------------------------------------------------------------------------
# ldm -> diffusers (diffusers' converters)


def unet_from_ldm(state: dict[str, torch.Tensor], unet_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``model.diffusion_model.*`` tensors -> UNet2DConditionModel names."""
    return convert_ldm_unet_checkpoint(state, dict(unet_config))


def vae_from_ldm(state: dict[str, torch.Tensor], vae_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``first_stage_model.*`` (or stand-alone ``encoder.*``...) tensors -> AutoencoderKL names."""
    return convert_ldm_vae_checkpoint(state, dict(vae_config))


def text_encoder_from_ldm(state: dict[str, torch.Tensor], text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """``cond_stage_model.transformer.*`` tensors -> ``text_encoder``'s names.

    The file's ``text_model.*`` keys (or pre-2022 keys without it) are matched to the module's
    keys; ``position_ids``, a buffer some exports kept, is dropped (the module builds its own).
    """
    converted = convert_ldm_clip_checkpoint(state)
    wants_prefix = any(key.startswith(_HF_TEXT_MODEL_PREFIX) for key in text_encoder.state_dict())
    result = {}
    for key, value in converted.items():
        bare = key.removeprefix(_HF_TEXT_MODEL_PREFIX)
        result[_HF_TEXT_MODEL_PREFIX + bare if wants_prefix else bare] = value
    return {key: value for key, value in result.items() if not key.endswith("position_ids")}


def controlnet_from_ldm(state: Mapping[str, torch.Tensor], controlnet_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """ldm ControlNet tensors, with or without ``control_model.``, -> ControlNetModel names."""
    return convert_controlnet_checkpoint(dict(state), dict(controlnet_config))


# ------------------------------------------------------------------------------------------
# diffusers -> ldm key maps (the inverse of diffusers' single-file converters)

_RESNET_TO_LDM = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)


def _rename(rest: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def _unet_encoder_key_to_ldm(key: str, layers_per_block: int) -> str | None:
    """A diffusers UNet/ControlNet encoder key -> its ldm name; None when not an encoder key."""
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.", "conv_in.": "input_blocks.0.0."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if match := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, part, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + block * (layers_per_block + 1) + layer
        if part == "resnets":
            return f"input_blocks.{index}.0.{_rename(rest, _RESNET_TO_LDM)}"
        return f"input_blocks.{index}.1.{rest}"
    if match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(match[1]) + 1) * (layers_per_block + 1)}.0.op.{match[2]}"
    if match := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        part, layer, rest = match[1], int(match[2]), match[3]
        if part == "resnets":
            return f"middle_block.{2 * layer}.{_rename(rest, _RESNET_TO_LDM)}"
        return f"middle_block.1.{rest}"
    return None


def ldm_unet_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The UNet's weights under their original ldm names (without the model.diffusion_model. prefix)."""
    layers = unet.config.layers_per_block
    result: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        ldm = _unet_encoder_key_to_ldm(key, layers)
        if ldm is None:
            if match := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
                block, part, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
                index = block * (layers + 1) + layer
                ldm = f"output_blocks.{index}.0.{_rename(rest, _RESNET_TO_LDM)}" if part == "resnets" else f"output_blocks.{index}.1.{rest}"
            elif match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
                block = int(match[1])
                has_attention = hasattr(unet.up_blocks[block], "attentions")
                ldm = f"output_blocks.{block * (layers + 1) + layers}.{2 if has_attention else 1}.conv.{match[2]}"
            elif key.startswith("conv_norm_out."):
                ldm = "out.0." + key[len("conv_norm_out.") :]
            elif key.startswith("conv_out."):
                ldm = "out.2." + key[len("conv_out.") :]
            else:
                raise ValueError(f"No ldm name for UNet key '{key}'.")
        result[ldm] = value
    return result


def ldm_controlnet_state_dict(controlnet: ControlNetModel) -> dict[str, torch.Tensor]:
    """A ControlNet's weights under the ldm ControlNet names (without the control_model. prefix)."""
    layers = controlnet.config.layers_per_block
    num_cond_blocks = len(controlnet.controlnet_cond_embedding.blocks)
    result: dict[str, torch.Tensor] = {}
    for key, value in controlnet.state_dict().items():
        ldm = _unet_encoder_key_to_ldm(key, layers)
        if ldm is None:
            if match := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", key):
                ldm = f"zero_convs.{match[1]}.0.{match[2]}"
            elif key.startswith("controlnet_mid_block."):
                ldm = "middle_block_out.0." + key[len("controlnet_mid_block.") :]
            elif key.startswith("controlnet_cond_embedding.conv_in."):
                ldm = "input_hint_block.0." + key[len("controlnet_cond_embedding.conv_in.") :]
            elif match := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", key):
                # ldm interleaves SiLU modules: conv k sits at index 2 (k + 1).
                ldm = f"input_hint_block.{2 * (int(match[1]) + 1)}.{match[2]}"
            elif key.startswith("controlnet_cond_embedding.conv_out."):
                ldm = f"input_hint_block.{2 * (num_cond_blocks + 1)}." + key[len("controlnet_cond_embedding.conv_out.") :]
            elif key.startswith("face_mask_head."):
                ldm = LDM_MASK_HEAD + key[len("face_mask_head.") :]
            else:
                raise ValueError(f"No ldm name for ControlNet key '{key}'.")
        result[ldm] = value
    return result


_VAE_ATTENTION_TO_LDM = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def ldm_vae_state_dict(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """The VAE's weights under their ldm names (attention projections as 1x1 convolutions)."""
    num_up = len(vae.config.up_block_types)
    result: dict[str, torch.Tensor] = {}
    for key, value in vae.state_dict().items():
        ldm = key.replace("conv_norm_out.", "norm_out.")
        if match := re.match(r"(encoder)\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            ldm = f"encoder.down.{match[2]}.block.{match[3]}.{match[4].replace('conv_shortcut.', 'nin_shortcut.')}"
        elif match := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            ldm = f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
        elif match := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            ldm = f"decoder.up.{num_up - 1 - int(match[1])}.block.{match[2]}.{match[3].replace('conv_shortcut.', 'nin_shortcut.')}"
        elif match := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            ldm = f"decoder.up.{num_up - 1 - int(match[1])}.upsample.conv.{match[2]}"
        elif match := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            ldm = f"{match[1]}.mid.block_{int(match[2]) + 1}.{match[3].replace('conv_shortcut.', 'nin_shortcut.')}"
        elif match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            ldm = f"{match[1]}.mid.attn_1.{_rename(match[2], _VAE_ATTENTION_TO_LDM)}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        result[ldm] = value
    return result


def ldm_text_state_dict(text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """CLIP text weights under the ``transformer.text_model.*`` names SD files use."""
    return {"transformer.text_model." + key.removeprefix("text_model."): value for key, value in text_encoder.state_dict().items()}


def export_original_sd(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """An SD single-file state dict in the original layout (what Realistic_Vision_V3.0.ckpt holds)."""
    state = {LDM_UNET_PREFIX + key: value for key, value in ldm_unet_state_dict(unet).items()}
    state.update({LDM_VAE_PREFIX + key: value for key, value in ldm_vae_state_dict(vae).items()})
    state.update({LDM_TEXT_STAGE_PREFIX + key: value for key, value in ldm_text_state_dict(text_encoder).items()})
    return state
