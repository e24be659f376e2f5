"""Speed options for a built pipeline: torch.compile and channels_last memory.

Both change how the same arithmetic runs, not what it computes (up to floating-point rounding):
- ``compile``: ``torch.compile`` of the UNet and CapFace (and the OpenPose ControlNet when
  there is one), the networks that run every denoising step (the text/image encoders and the VAE run once per call, so compiling them buys
  little). The modules are compiled in place (``nn.Module.compile``), so the pipeline keeps its
  own objects, their configs and dtypes; the first call for each new input shape compiles.
- ``channels_last``: NHWC memory for those networks and the VAE, the layout tensor cores'
  convolution kernels prefer on CUDA (on CPU it is usually neutral).

Attention kernels are chosen separately (``sampling.attention``: PyTorch SDPA or xformers).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def apply_speed_options(pipe, compile: bool = False, channels_last: bool = False) -> None:
    """Apply the options to ``pipe`` (a CapHumanPipeline or any pipeline with a ``unet``, and
    optionally ``capface``, ``controlnet``, ``body_controlnet`` and ``vae``), in place."""
    names = ("unet", "capface", "controlnet", "body_controlnet")
    per_step = [module for module in (getattr(pipe, name, None) for name in names) if module is not None]
    if channels_last:
        for module in [*per_step, getattr(pipe, "vae", None)]:
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if compile:
        for module in per_step:
            module.compile()
        logger.info("torch.compile: %s compile on their first call per input shape.", ", ".join(type(m).__name__ for m in per_step))


__all__ = ["apply_speed_options"]
