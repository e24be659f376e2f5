"""CapFace: the trainable control branch of CapHuman.

CapFace is a copy of the SD UNet's encoder and middle block (a ControlNet), whose
cross-attention sees the identity tokens instead of the text, plus a 9-channel hint stem and a
face-mask head. Its shapes are exactly those of diffusers' :class:`ControlNetModel` with
``conditioning_channels=9`` (the hint stem 9->16->16->32->32->96->96->256->320, 12 down-block
zero convolutions, one middle zero convolution), so we subclass it and add only:

- ``face_mask_head``: Conv2d(320 -> 1, 3x3) + sigmoid on the embedded hint (the original
  ``mask_predict``), predicting the face region at latent resolution;
- a forward that also returns that mask, and :meth:`CapFaceOutput.gated_residuals`, which scales
  the 13 residuals by the strength and multiplies each by (mask > 0.5) resized to its resolution;
- :func:`resize_face_mask`, the published model's mask resize, shared by the gate and by the
  training target of the mask head.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.utils import BaseOutput
from torch import nn

from caphuman.conditions.hint_layout import HINT_CHANNELS

MASK_THRESHOLD = 0.5

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def resize_face_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a mask exactly as the published code does: torchvision 0.14.1's ``F.resize(mask, size)``.

    The official ``cldm.py`` resizes the predicted mask to each residual's resolution, and the
    training step resizes the face-parsing target, with ``torchvision.transforms.functional.resize``
    on a tensor. In its pinned torchvision (0.14.1) that is, for a tensor:

    - the same size: the tensor itself, untouched;
    - otherwise ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` WITHOUT
      antialiasing (torchvision antialiased tensors by default only from 0.17 on): each output
      cell is a bilinear sample at its centre; for the halvings of the UNet (64 -> 32/16/8) that
      is the mean of the 2x2 input cells around that centre, not an average over the whole block;
    - computed in float32 unless the tensor is float32/float64, then cast back to the input dtype,
      after ``torch.round`` (half to even) when that dtype is an integer one.

    Args:
        mask: (B, C, h, w) mask (float: probabilities; integer: labels or 0/1 regions).
        size: (H, W) output size.
    Returns:
        (B, C, H, W) in ``mask``'s dtype.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(mask.shape[-2:]) == size:
        return mask
    dtype = mask.dtype
    work = mask if dtype in (torch.float32, torch.float64) else mask.to(torch.float32)
    resized = F.interpolate(work, size=size, mode="bilinear", align_corners=False, antialias=False)
    if dtype in _INTEGER_DTYPES:
        resized = torch.round(resized)
    return resized.to(dtype)


@dataclass
class CapFaceOutput(BaseOutput):
    """What one CapFace pass returns.

    Attributes:
        down_block_res_samples: 12 residuals for the UNet's down-block skips, (B, C_i, h_i, w_i).
        mid_block_res_sample: (B, C_mid, h_mid, w_mid) residual for the UNet's middle block.
        face_mask: (B, 1, h, w) face probability at latent resolution (h = H / 8).
    """

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor
    face_mask: torch.Tensor

    def gated_residuals(self, strength: float = 1.0, mask_gating: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals ready for the UNet: times ``strength`` and, when gating, times (mask > 0.5).

        As in the published model, the mask is first resized to each residual's resolution with
        :func:`resize_face_mask` (a plain bilinear sample) and then thresholded. The mask is
        detached: gating is a hard 0/1 selection, and the mask head learns only from its own loss.
        """
        residuals = [*self.down_block_res_samples, self.mid_block_res_sample]
        if mask_gating:
            gates: dict[tuple[int, int], torch.Tensor] = {}
            mask = self.face_mask.detach()
            gated = []
            for residual in residuals:
                size = tuple(residual.shape[-2:])
                if size not in gates:
                    gates[size] = (resize_face_mask(mask, size) > MASK_THRESHOLD).to(residual.dtype)
                gated.append(residual * gates[size])
            residuals = gated
        if strength != 1.0:
            residuals = [residual * strength for residual in residuals]
        return residuals[:-1], residuals[-1]


class CapFaceModel(ControlNetModel):
    """A ControlNet over identity tokens with a face-mask head. Build it with :meth:`from_unet`.

    The constructor takes exactly ControlNetModel's arguments (so ``from_unet``,
    ``save_pretrained`` and ``from_pretrained`` work unchanged) and adds the mask head, whose
    size follows from ``block_out_channels[0]``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.config.class_embed_type is not None or self.config.addition_embed_type is not None:
            raise ValueError("CapFace supports SD 1.5-style UNets without class or addition embeddings.")
        self.face_mask_head = nn.Conv2d(self.config.block_out_channels[0], 1, kernel_size=3, padding=1)

    # diffusers reads the constructor's signature to know which config keys it accepts; ours
    # forwards everything to ControlNetModel, so it advertises that signature.
    __init__.__signature__ = inspect.signature(ControlNetModel.__init__)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, load_weights_from_unet: bool = True, **kwargs) -> CapFaceModel:
        """Copy the UNet's encoder + middle block (and config) with a 9-channel hint stem."""
        kwargs.setdefault("conditioning_channels", HINT_CHANNELS)
        return super().from_unet(unet, load_weights_from_unet=load_weights_from_unet, **kwargs)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        identity_tokens: torch.Tensor,
        hint: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict | None = None,
    ) -> CapFaceOutput:
        """Run the branch.

        Args:
            sample: (B, 4, h, w) noisy latents.
            timestep: scalar or (B,) timesteps.
            identity_tokens: (B, T, cross_attention_dim) identity tokens (not the text).
            hint: (B, 9, 8h, 8w) head condition: normals, albedo, shaded render.
        Returns:
            :class:`CapFaceOutput` with raw (unscaled, ungated) residuals and the face mask.
        """
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(sample.shape[0])
        # time_proj returns float32; the embedding may run in fp16/bf16.
        time_features = self.time_proj(timesteps).to(dtype=sample.dtype)
        embedding = self.time_embedding(time_features)

        hidden = self.conv_in(sample)
        hint_features = self.controlnet_cond_embedding(hint.to(hidden.dtype))
        face_mask = torch.sigmoid(self.face_mask_head(hint_features))
        hidden = hidden + hint_features

        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, block_skips = block(
                    hidden_states=hidden,
                    temb=embedding,
                    encoder_hidden_states=identity_tokens,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                )
            else:
                hidden, block_skips = block(hidden_states=hidden, temb=embedding)
            skips += block_skips

        if getattr(self.mid_block, "has_cross_attention", False):
            hidden = self.mid_block(
                hidden,
                embedding,
                encoder_hidden_states=identity_tokens,
                attention_mask=attention_mask,
                cross_attention_kwargs=cross_attention_kwargs,
            )
        else:
            hidden = self.mid_block(hidden, embedding)

        down_residuals = tuple(zero_conv(skip) for skip, zero_conv in zip(skips, self.controlnet_down_blocks, strict=True))
        mid_residual = self.controlnet_mid_block(hidden)
        return CapFaceOutput(down_block_res_samples=down_residuals, mid_block_res_sample=mid_residual, face_mask=face_mask)
