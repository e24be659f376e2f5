"""Import the original CapHuman release (caphuman.ckpt), and export our adapter to its layout.

The original checkpoint is a Lightning state dict of the whole ``CapHuman`` LatentDiffusion
model (key names as in the reference code's src/cldm/cldm.py and models/cldm_v15.yaml).
:data:`ORIGINAL_KEY_MAP` says, prefix by prefix, where each of its tensors goes in our
:class:`~caphuman.models.adapter.CapHumanAdapter` (``None``: skipped):

- ``control_model.*``: CapFace in the ldm ControlNet layout: ``time_embed.{0,2}``,
  ``input_blocks.N.*``, ``middle_block.{0,1,2}.*``, ``input_hint_block.{0,2,...,14}`` (the 9-channel
  hint stem), ``zero_convs.N.0``, ``middle_block_out.0``, converted by diffusers' ControlNet
  converter (:func:`caphuman.weights.ldm_layout.controlnet_from_ldm`), plus ``mask_predict.0``
  (the face-mask conv, our ``face_mask_head``);
- ``id_linear.{weight,bias}``: Linear(512 -> 768) on the FaceNet embedding (our
  ``identity_encoder.global_projection``);
- ``img_linear.{weight,bias}``: Linear(1024 -> 768) on the CLIP vision tokens (our
  ``identity_encoder.local_projection``);
- frozen parts that we load from their own files and therefore skip: ``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.*``, ``control_cond_stage_model.*`` (CLIP vision),
  ``model_ema.*`` and LatentDiffusion's schedule buffers (:data:`SCHEDULE_BUFFERS`).

:func:`export_original` is the inverse (tests use it to build original-layout files).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from caphuman.conditions.hint_layout import HINT_CHANNELS
from caphuman.errors import CapHumanError
from caphuman.models.adapter import CapHumanAdapter
from caphuman.models.architectures import SD15_UNET
from caphuman.models.capface import CapFaceModel
from caphuman.models.identity_encoder import IdentityEncoder
from caphuman.weights.files import read_state_dict
from caphuman.weights.ldm_layout import LDM_CONTROLNET_PREFIX, LDM_MASK_HEAD, controlnet_from_ldm, ldm_controlnet_state_dict
from caphuman.weights.registry import missing_weights
from caphuman.weights.strict import load_checked

logger = logging.getLogger(__name__)

# The manifest entry (checkpoints/manifest.yaml) of caphuman.ckpt.
ORIGINAL_ENTRY = "caphuman_original"
CAPFACE = "capface."
GLOBAL_PROJECTION = "identity_encoder.global_projection."
LOCAL_PROJECTION = "identity_encoder.local_projection."

# caphuman.ckpt prefix -> our adapter's prefix (None: skipped). The longest matching prefix
# wins, so the mask head is taken out of control_model. before the ControlNet conversion.
ORIGINAL_KEY_MAP: dict[str, str | None] = {
    LDM_CONTROLNET_PREFIX + LDM_MASK_HEAD: CAPFACE + "face_mask_head.",
    LDM_CONTROLNET_PREFIX: CAPFACE,  # the ldm ControlNet layout: renamed by controlnet_from_ldm
    "id_linear.": GLOBAL_PROJECTION,
    "img_linear.": LOCAL_PROJECTION,
    # The frozen backbone, loaded from its own files (model.stable_diffusion, model.vae,
    # model.clip_vision), and the EMA copy the release also carries.
    "model.diffusion_model.": None,
    "first_stage_model.": None,
    "cond_stage_model.": None,
    "control_cond_stage_model.": None,
    "model_ema.": None,
}
# LatentDiffusion's registered buffers (the noise schedule), also skipped.
SCHEDULE_BUFFERS = frozenset(
    {
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
        "logvar", "scale_factor",
    }
)  # fmt: skip
SCHEDULE_BUFFERS_LABEL = "schedule buffers"
# What identifies the original checkpoint (doctor checks these without loading it).
ORIGINAL_REQUIRED_KEYS = (
    LDM_CONTROLNET_PREFIX + "input_hint_block.0.weight",
    LDM_CONTROLNET_PREFIX + "middle_block_out.0.weight",
    LDM_CONTROLNET_PREFIX + LDM_MASK_HEAD + "weight",
    "id_linear.weight",
    "img_linear.weight",
)
# The SD 1.5 UNet settings CapFace copies when no config is given.
_CAPFACE_FROM_UNET = ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim", "norm_num_groups")


def original_prefix(key: str) -> str | None:
    """The longest :data:`ORIGINAL_KEY_MAP` prefix of ``key``, or None when it has none."""
    return max((prefix for prefix in ORIGINAL_KEY_MAP if key.startswith(prefix)), key=len, default=None)


def export_original(adapter: CapHumanAdapter) -> dict[str, torch.Tensor]:
    """Our adapter in caphuman.ckpt's key layout (CapFace under control_model., id_linear, img_linear)."""
    state = {LDM_CONTROLNET_PREFIX + key: value for key, value in ldm_controlnet_state_dict(adapter.capface).items()}
    for original, ours in ORIGINAL_KEY_MAP.items():
        if ours in (GLOBAL_PROJECTION, LOCAL_PROJECTION):
            state.update({original + key[len(ours) :]: value for key, value in adapter.state_dict().items() if key.startswith(ours)})
    return state


# ------------------------------------------------------------------------------------------
# caphuman.ckpt -> CapHumanAdapter


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion used and skipped."""

    converted: int
    skipped: int
    skipped_prefixes: dict[str, int]


def _split_original(state: Mapping[str, torch.Tensor], path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, int]]:
    """-> (our prefix -> {rest of the original key: tensor}, skipped counts by original prefix)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    skipped: dict[str, int] = {}
    unknown = []
    for key, value in state.items():
        prefix = original_prefix(key)
        if key in SCHEDULE_BUFFERS:
            skipped[SCHEDULE_BUFFERS_LABEL] = skipped.get(SCHEDULE_BUFFERS_LABEL, 0) + 1
        elif prefix is None:
            unknown.append(key)
        elif ORIGINAL_KEY_MAP[prefix] is None:
            skipped[prefix] = skipped.get(prefix, 0) + 1
        else:
            parts.setdefault(ORIGINAL_KEY_MAP[prefix], {})[key[len(prefix) :]] = value
    if unknown:
        raise CapHumanError(f"'{path}' has keys this converter does not know: {', '.join(sorted(unknown))}.")
    return parts, skipped


def _capface_config(controlnet_part: Mapping[str, torch.Tensor], template: Mapping | None) -> dict:
    """CapFace's config: the template's (default: SD 1.5) with the hint width read from the tensors."""
    config = dict(template) if template is not None else {key: SD15_UNET[key] for key in _CAPFACE_FROM_UNET}
    config.setdefault("down_block_types", SD15_UNET["down_block_types"])
    hint_stem = controlnet_part.get("input_hint_block.0.weight")
    config["conditioning_channels"] = int(hint_stem.shape[1]) if hint_stem is not None else HINT_CHANNELS
    return config


def _names_in_file(ours_to_original: Mapping[str, str]):
    """our key -> how caphuman.ckpt spells it, by exact name or else by prefix (for messages)."""

    def spelled(key: str) -> str:
        if key in ours_to_original:
            return ours_to_original[key]
        for ours, theirs in ours_to_original.items():
            if key.startswith(ours):
                return theirs + key[len(ours) :]
        return key

    return spelled


def convert_original_state_dict(
    state: Mapping[str, torch.Tensor], path: str | Path = "caphuman.ckpt", capface_config: Mapping | None = None
) -> tuple[CapHumanAdapter, ConversionReport]:
    """Map the original state dict to a :class:`CapHumanAdapter` (see :data:`ORIGINAL_KEY_MAP`).

    Args:
        state: caphuman.ckpt's state dict (all keys, frozen parts included).
        path: named in error messages.
        capface_config: a CapFaceModel/ControlNetModel config to build into (default: SD 1.5's).
    Raises:
        CapHumanError: unknown keys, missing CapFace/projection keys, or mis-shaped tensors,
            each listed by name.
    """
    path = Path(path)
    parts, skipped = _split_original(state, path)
    controlnet_part, mask_head = parts.get(CAPFACE, {}), parts.get(CAPFACE + "face_mask_head.", {})
    capface = CapFaceModel.from_config(_capface_config(controlnet_part, capface_config))
    # Passed with its control_model. prefix: the converter then never mistakes a partial dict
    # (one without time_embed.0.weight) for an already-stripped one.
    prefixed = {LDM_CONTROLNET_PREFIX + key: value for key, value in controlnet_part.items()}
    capface_state = {key: value for key, value in controlnet_from_ldm(prefixed, capface.config).items() if value is not None}
    capface_state.update({"face_mask_head." + key: value for key, value in mask_head.items()})
    ldm_names = list(ldm_controlnet_state_dict(capface))  # the module's keys' ldm names, in its order
    known = set(ldm_names)
    unknown_control = sorted(
        LDM_CONTROLNET_PREFIX + key for key in [*controlnet_part, *(LDM_MASK_HEAD + rest for rest in mask_head)] if key not in known
    )
    if unknown_control:
        raise CapHumanError(f"'{path}' has control_model keys this converter does not know: {', '.join(unknown_control)}.")

    projections = {ours: parts.get(ours, {}) for ours in (GLOBAL_PROJECTION, LOCAL_PROJECTION)}
    originals = {ours: original for original, ours in ORIGINAL_KEY_MAP.items() if ours in projections}
    missing_projection = [originals[ours] + "weight" for ours, tensors in projections.items() if "weight" not in tensors]
    if missing_projection:
        raise CapHumanError(f"'{path}' lacks the identity projection key(s) {', '.join(missing_projection)}.")
    face_weight, clip_weight = projections[GLOBAL_PROJECTION]["weight"], projections[LOCAL_PROJECTION]["weight"]
    identity_encoder = IdentityEncoder(
        face_embedding_dim=int(face_weight.shape[1]), clip_embedding_dim=int(clip_weight.shape[1]), cross_attention_dim=int(face_weight.shape[0])
    )
    inside_encoder = len("identity_encoder.")
    identity_state = {ours[inside_encoder:] + key: value for ours, tensors in projections.items() for key, value in tensors.items()}

    capface_names = dict(zip(capface.state_dict(), (LDM_CONTROLNET_PREFIX + name for name in ldm_names), strict=True))
    load_checked(
        capface,
        capface_state,
        path,
        "CapFace (control_model.)",
        ignore_unexpected=True,
        name_in_file=_names_in_file(capface_names),
        dtype=torch.float32,
    )
    load_checked(
        identity_encoder,
        identity_state,
        path,
        "identity projections",
        ignore_unexpected=True,
        name_in_file=_names_in_file({ours[inside_encoder:]: original for ours, original in originals.items()}),
        dtype=torch.float32,
    )
    report = ConversionReport(converted=len(capface_state) + len(identity_state), skipped=sum(skipped.values()), skipped_prefixes=skipped)
    return CapHumanAdapter(capface, identity_encoder), report


def convert_original_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike, capface_config: Mapping | None = None) -> ConversionReport:
    """caphuman.ckpt (or a .safetensors of the same keys) -> an adapter folder at ``out_dir``.

    Read with ``weights_only=True``; written atomically with CapHumanAdapter.save_pretrained.
    """
    source = Path(source)
    if not source.is_file():
        raise missing_weights(ORIGINAL_ENTRY, "original CapHuman checkpoint", source)
    state = read_state_dict(source)
    adapter, report = convert_original_state_dict(state, source, capface_config)
    del state
    adapter.save_pretrained(out_dir, metadata={"converted_from": source.name, "source_layout": "CapHuman CVPR 2024 release (ldm)"})
    logger.info(
        "Converted %d tensors from %s into %s; skipped %d frozen-backbone tensors (%s).",
        report.converted, source, out_dir, report.skipped,
        ", ".join(f"{prefix} {count}" for prefix, count in sorted(report.skipped_prefixes.items())) or "none",
    )  # fmt: skip
    return report
