"""Import the original CapHuman release (caphuman.ckpt), and export to the original layouts.

The original checkpoint is a Lightning state dict of the whole ``CapHuman`` LatentDiffusion
model (key names as in the reference code's src/cldm/cldm.py and models/cldm_v15.yaml):

- ``control_model.*``: CapFace in the ldm ControlNet layout: ``time_embed.{0,2}``,
  ``input_blocks.N.*``, ``middle_block.{0,1,2}.*``, ``input_hint_block.{0,2,...,14}`` (the 9-channel
  hint stem), ``zero_convs.N.0``, ``middle_block_out.0``, plus ``mask_predict.0`` (the face-mask
  conv, our ``face_mask_head``);
- ``id_linear.{weight,bias}``: Linear(512 -> 768) on the FaceNet embedding (our
  ``identity_encoder.global_projection``);
- ``img_linear.{weight,bias}``: Linear(1024 -> 768) on the CLIP vision tokens (our
  ``identity_encoder.local_projection``);
- frozen parts that we load from their own files and therefore skip: ``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.*``, ``control_cond_stage_model.*`` (CLIP vision),
  ``model_ema.*`` and LatentDiffusion's schedule buffers (``betas``, ``alphas_cumprod`` ...).

The ControlNet part is converted by diffusers' ``convert_controlnet_checkpoint``; only the
CapHuman-specific keys are mapped here. The inverse maps (diffusers -> ldm) below export our
models to the original layouts; tests use them to build original-layout files.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from torch import nn

from caphuman.conditions.hint_layout import HINT_CHANNELS
from caphuman.errors import CapHumanError, MissingWeightsError
from caphuman.models.adapter import CapHumanAdapter
from caphuman.models.capface import CapFaceModel
from caphuman.models.identity_encoder import IdentityEncoder
from caphuman.weights import read_state_dict

logger = logging.getLogger(__name__)

ORIGINAL_SOURCE = "https://huggingface.co/VamosC/CapHuman/resolve/main/caphuman.ckpt"
CONTROL_PREFIX = "control_model."
MASK_HEAD_ORIGINAL = "mask_predict.0."
GLOBAL_PROJECTION_ORIGINAL = "id_linear."
LOCAL_PROJECTION_ORIGINAL = "img_linear."
# Keys of the frozen backbone inside caphuman.ckpt: loaded from their own files, so skipped.
SKIPPED_PREFIXES = (
    "model.diffusion_model.",
    "first_stage_model.",
    "cond_stage_model.",
    "control_cond_stage_model.",
    "model_ema.",
)
# LatentDiffusion's registered buffers (the noise schedule), also skipped.
SKIPPED_KEYS = frozenset(
    {
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
        "logvar", "scale_factor",
    }
)  # fmt: skip
# What identifies the original checkpoint (doctor checks these without loading it).
ORIGINAL_REQUIRED_KEYS = (
    CONTROL_PREFIX + "input_hint_block.0.weight",
    CONTROL_PREFIX + "middle_block_out.0.weight",
    CONTROL_PREFIX + MASK_HEAD_ORIGINAL + "weight",
    GLOBAL_PROJECTION_ORIGINAL + "weight",
    LOCAL_PROJECTION_ORIGINAL + "weight",
)


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
                ldm = MASK_HEAD_ORIGINAL + key[len("face_mask_head.") :]
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
    state = {"model.diffusion_model." + key: value for key, value in ldm_unet_state_dict(unet).items()}
    state.update({"first_stage_model." + key: value for key, value in ldm_vae_state_dict(vae).items()})
    state.update({"cond_stage_model." + key: value for key, value in ldm_text_state_dict(text_encoder).items()})
    return state


def export_original(adapter: CapHumanAdapter) -> dict[str, torch.Tensor]:
    """Our adapter in caphuman.ckpt's key layout (CapFace under control_model., id_linear, img_linear)."""
    state = {CONTROL_PREFIX + key: value for key, value in ldm_controlnet_state_dict(adapter.capface).items()}
    for prefix, module in ((GLOBAL_PROJECTION_ORIGINAL, adapter.identity_encoder.global_projection), (LOCAL_PROJECTION_ORIGINAL, adapter.identity_encoder.local_projection)):
        state.update({prefix + key: value for key, value in module.state_dict().items()})
    return state


# ------------------------------------------------------------------------------------------
# caphuman.ckpt -> CapHumanAdapter


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion used and skipped."""

    converted: int
    skipped: int
    skipped_prefixes: dict[str, int]


def _split_original(state: Mapping[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, int]]:
    """-> (control_model tensors without the prefix, id/img projection tensors, skipped counts)."""
    control, projections, skipped, unknown = {}, {}, {}, []
    for key, value in state.items():
        if key.startswith(CONTROL_PREFIX):
            control[key[len(CONTROL_PREFIX) :]] = value
        elif key.startswith((GLOBAL_PROJECTION_ORIGINAL, LOCAL_PROJECTION_ORIGINAL)):
            projections[key] = value
        elif key in SKIPPED_KEYS:
            skipped["schedule buffers"] = skipped.get("schedule buffers", 0) + 1
        elif prefix := next((prefix for prefix in SKIPPED_PREFIXES if key.startswith(prefix)), None):
            skipped[prefix] = skipped.get(prefix, 0) + 1
        else:
            unknown.append(key)
    if unknown:
        raise CapHumanError(f"'{path}' has keys this converter does not know: {', '.join(sorted(unknown))}.")
    return control, projections, skipped


def _capface_config(control: Mapping[str, torch.Tensor], template: Mapping | None) -> dict:
    """CapFace's config: the template's (default: SD 1.5) with the widths read from the tensors."""
    from caphuman.models.architectures import SD15_UNET

    config = dict(template) if template is not None else {
        key: SD15_UNET[key] for key in ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim", "norm_num_groups")
    }
    config.setdefault("down_block_types", SD15_UNET["down_block_types"])
    config["conditioning_channels"] = int(control["input_hint_block.0.weight"].shape[1]) if "input_hint_block.0.weight" in control else HINT_CHANNELS
    return config


def convert_original_state_dict(
    state: Mapping[str, torch.Tensor], path: str | Path = "caphuman.ckpt", capface_config: Mapping | None = None
) -> tuple[CapHumanAdapter, ConversionReport]:
    """Map the original state dict to a :class:`CapHumanAdapter`.

    Args:
        state: caphuman.ckpt's state dict (all keys, frozen parts included).
        path: named in error messages.
        capface_config: a CapFaceModel/ControlNetModel config to build into (default: SD 1.5's).
    Raises:
        CapHumanError: unknown keys, missing CapFace/projection keys, or mis-shaped tensors,
            each listed by name.
    """
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    path = Path(path)
    control, projections, skipped = _split_original(state, path)
    config = _capface_config(control, capface_config)
    capface = CapFaceModel.from_config(config)
    # diffusers' converter maps the ControlNet keys; the mask head is CapHuman's own.
    mask_head = {key[len(MASK_HEAD_ORIGINAL) :]: value for key, value in control.items() if key.startswith(MASK_HEAD_ORIGINAL)}
    controlnet_part = {key: value for key, value in control.items() if not key.startswith(MASK_HEAD_ORIGINAL)}
    # Passed with its control_model. prefix: the converter then never mistakes a partial dict
    # (one without time_embed.0.weight) for an already-stripped one.
    prefixed = {CONTROL_PREFIX + key: value for key, value in controlnet_part.items()}
    converted = {key: value for key, value in convert_controlnet_checkpoint(prefixed, dict(capface.config)).items() if value is not None}
    converted.update({"face_mask_head." + key: value for key, value in mask_head.items()})
    used = _used_ldm_keys(capface)
    unknown_control = sorted(CONTROL_PREFIX + key for key in control if key not in used)
    if unknown_control:
        raise CapHumanError(f"'{path}' has control_model keys this converter does not know: {', '.join(unknown_control)}.")

    face_dim = projections.get(GLOBAL_PROJECTION_ORIGINAL + "weight")
    clip_dim = projections.get(LOCAL_PROJECTION_ORIGINAL + "weight")
    missing_projection = [key for key, value in ((GLOBAL_PROJECTION_ORIGINAL + "weight", face_dim), (LOCAL_PROJECTION_ORIGINAL + "weight", clip_dim)) if value is None]
    if missing_projection:
        raise CapHumanError(f"'{path}' lacks the identity projection key(s) {', '.join(missing_projection)}.")
    identity_encoder = IdentityEncoder(
        face_embedding_dim=int(face_dim.shape[1]), clip_embedding_dim=int(clip_dim.shape[1]), cross_attention_dim=int(face_dim.shape[0])
    )
    identity_state = {
        "global_projection." + key[len(GLOBAL_PROJECTION_ORIGINAL) :] if key.startswith(GLOBAL_PROJECTION_ORIGINAL) else "local_projection." + key[len(LOCAL_PROJECTION_ORIGINAL) :]: value
        for key, value in projections.items()
    }
    _load_exact(capface, converted, path, "CapFace (control_model.)", _to_original_name(capface))
    _load_exact(identity_encoder, identity_state, path, "identity projections", {"global_projection.": GLOBAL_PROJECTION_ORIGINAL, "local_projection.": LOCAL_PROJECTION_ORIGINAL})
    report = ConversionReport(converted=len(converted) + len(identity_state), skipped=sum(skipped.values()), skipped_prefixes=skipped)
    return CapHumanAdapter(capface, identity_encoder), report


def _used_ldm_keys(capface: CapFaceModel) -> set[str]:
    return set(ldm_controlnet_state_dict(capface))


def _to_original_name(capface: CapFaceModel) -> dict[str, str]:
    """diffusers key -> original key, to name missing keys as they are spelled in the file."""
    return {key: CONTROL_PREFIX + ldm for key, ldm in zip(capface.state_dict(), ldm_controlnet_state_dict(capface))}


def _load_exact(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str, original_names: Mapping[str, str]) -> None:
    expected = module.state_dict()

    def original(key: str) -> str:
        if key in original_names:
            return original_names[key]
        for ours, theirs in original_names.items():
            if key.startswith(ours):
                return theirs + key[len(ours) :]
        return key

    missing = sorted(original(key) for key in expected if key not in state)
    if missing:
        raise CapHumanError(f"'{path}' lacks {what} key(s): {', '.join(missing)}.")
    mis_shaped = sorted(
        f"{original(key)} {tuple(value.shape)} (expected {tuple(expected[key].shape)})"
        for key, value in state.items()
        if key in expected and value.shape != expected[key].shape
    )
    if mis_shaped:
        raise CapHumanError(f"'{path}' has mis-shaped {what} tensor(s): {', '.join(mis_shaped)}.")
    module.load_state_dict({key: value.to(torch.float32) for key, value in state.items() if key in expected}, strict=True)


def convert_original_checkpoint(
    source: str | os.PathLike, out_dir: str | os.PathLike, capface_config: Mapping | None = None
) -> ConversionReport:
    """caphuman.ckpt (or a .safetensors of the same keys) -> an adapter folder at ``out_dir``.

    Read with ``weights_only=True``; written atomically with CapHumanAdapter.save_pretrained.
    """
    source = Path(source)
    if not source.is_file():
        raise MissingWeightsError("original CapHuman checkpoint", str(source), ORIGINAL_SOURCE)
    state = read_state_dict(source, what="original CapHuman checkpoint", source=ORIGINAL_SOURCE)
    adapter, report = convert_original_state_dict(state, source, capface_config)
    del state
    adapter.save_pretrained(out_dir, metadata={"converted_from": source.name, "source_layout": "CapHuman CVPR 2024 release (ldm)"})
    logger.info(
        "Converted %d tensors from %s into %s; skipped %d frozen-backbone tensors (%s).",
        report.converted, source, out_dir, report.skipped,
        ", ".join(f"{prefix} {count}" for prefix, count in sorted(report.skipped_prefixes.items())) or "none",
    )  # fmt: skip
    return report
