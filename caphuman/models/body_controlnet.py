"""The second control branch: lllyasviel's ControlNet v1.1 OpenPose for SD 1.5, as diffusers'
ControlNetModel.

It comes as the original single file (``control_v11p_sd15_openpose.pth``: ``control_model.*``
keys in the ldm ControlNet layout: ``input_hint_block.*``, ``input_blocks.*``, ``zero_convs.*``,
``middle_block.*``, ``middle_block_out.*``) or as a diffusers folder (config.json + weights, e.g.
lllyasviel/control_v11p_sd15_openpose). A single file has no config, and no hub is reachable to
fetch one, so the architecture is set explicitly: the SD 1.5 UNet's encoder (the backbone's UNet
config) with a 3-channel hint, which is what ``control_v11p_sd15_openpose.yaml`` describes. The
keys are converted by diffusers' own ``convert_controlnet_checkpoint`` (what
``ControlNetModel.from_single_file`` runs) and assigned without a second copy. Pickled files are
opened only with ``weights_only=True``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel

from caphuman.errors import MissingWeightsError
from caphuman.models.architectures import SD15_UNET
from caphuman.weights.files import read_state_dict
from caphuman.weights.ldm_layout import LDM_CONTROLNET_PREFIX, controlnet_from_ldm, ldm_controlnet_state_dict
from caphuman.weights.registry import missing_weights, weights_entry
from caphuman.weights.stable_diffusion import assign_checked, empty_module, from_pretrained_offline

logger = logging.getLogger(__name__)

OPENPOSE_HINT_CHANNELS = 3


def missing_body_controlnet(path: str | Path) -> MissingWeightsError:
    """The error for a missing OpenPose ControlNet at ``path``: where to get the single file and,
    as the alternative, the diffusers folder (both manifest entries)."""
    folder = weights_entry("body_controlnet_diffusers")
    return missing_weights(
        "body_controlnet", "OpenPose ControlNet", path, hint=f" or the diffusers folder {folder.source} (`caphuman download body_controlnet`)"
    )


def controlnet_config_from_unet(unet_config: Mapping[str, Any] | None = None, conditioning_channels: int = OPENPOSE_HINT_CHANNELS) -> dict[str, Any]:
    """ControlNetModel config for a UNet's encoder (default: SD 1.5's) with an ``conditioning_channels`` hint,
    as ``ControlNetModel.from_unet`` would build it."""
    unet_config = dict(SD15_UNET if unet_config is None else unet_config)
    accepted = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    config = {key: value for key, value in unet_config.items() if key in accepted}
    config["conditioning_channels"] = int(conditioning_channels)
    return config


def original_controlnet_state_dict(controlnet: ControlNetModel) -> dict[str, torch.Tensor]:
    """A ControlNetModel's weights under the original file's names (``control_model.`` + ldm names)."""
    return {LDM_CONTROLNET_PREFIX + key: value for key, value in ldm_controlnet_state_dict(controlnet).items()}


def load_body_controlnet(path: str | Path, unet_config: Mapping[str, Any] | None = None, dtype: torch.dtype = torch.float32) -> ControlNetModel:
    """The OpenPose ControlNet from a diffusers folder or an original single file (eval mode).

    Args:
        path: a folder with config.json, or a .pth/.ckpt/.safetensors file.
        unet_config: the backbone UNet's config, which a single file's architecture follows
            (default: SD 1.5's).
    Raises:
        MissingWeightsError: nothing at ``path``.
        CapHumanError: unreadable file, a pickle weights_only refuses, or keys/shapes that do not
            fit the architecture (naming the file).
    """
    path = Path(path)
    if not path.exists():
        raise missing_body_controlnet(path)
    if path.is_dir():
        controlnet = from_pretrained_offline(ControlNetModel, path, "OpenPose ControlNet", torch_dtype=dtype)
        return controlnet.eval()
    config = controlnet_config_from_unet(unet_config)
    state = read_state_dict(path)
    converted = controlnet_from_ldm(state, config)
    del state
    controlnet = empty_module(lambda: ControlNetModel.from_config(config))
    controlnet = assign_checked(controlnet, converted, path, "SD 1.5 ControlNet", dtype)
    logger.info("OpenPose ControlNet loaded from %s.", path)
    return controlnet


__all__ = [
    "controlnet_config_from_unet",
    "load_body_controlnet",
    "missing_body_controlnet",
    "original_controlnet_state_dict",
]
