"""The 9-channel head condition ("hint") CapFace sees: normals, albedo and shaded render.

Channel order is CapHuman's published one: surface normals (3, camera frame, in [-1, 1]),
albedo (3) and the Lambertian SH-shaded render (3, albedo x shading). All three are 0 on the
background; ``mask`` marks the head. Each prior's mesh says how it is shaded: the DECA prior with
DECA's own formulas (albedo looked up per pixel in the UV map, interpolated unit vertex normals
not renormalised, nothing clamped, so albedo and shaded may leave [0, 1] as in the published
hints); the built-in prior with per-vertex albedo, unit normals and both colours clipped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from caphuman.conditions.hint_layout import ALBEDO_CHANNELS, HINT_CHANNELS, NORMAL_CHANNELS, SHADED_CHANNELS
from caphuman.head.params import HeadParams
from caphuman.head.prior import HeadPrior
from caphuman.head.renderer import MeshRenderer


@dataclass
class HeadHint:
    """A rendered head condition.

    Attributes:
        hint: (B, 9, H, W) float32: normals in [-1, 1], albedo, shaded render (see the module docstring).
        mask: (B, 1, H, W) float32, 1 where the head covers the pixel.
    """

    hint: torch.Tensor
    mask: torch.Tensor


def render_hint(prior: HeadPrior, params: HeadParams, image_size: int = 512, renderer: MeshRenderer | None = None) -> HeadHint:
    """Render the 9-channel hint of ``params`` with the prior that made them.

    Args:
        prior: the head prior whose basis ``params`` use (``params.backend`` must be its name).
        params: a batch of B heads.
        image_size: output side in pixels (square; CapHuman uses 512).
        renderer: a renderer to reuse; one of ``image_size`` is made otherwise.
    """
    if params.backend != prior.name:
        raise ValueError(f"Head parameters come from the '{params.backend}' prior, not '{prior.name}'.")
    renderer = renderer if renderer is not None else MeshRenderer(image_size)
    if (renderer.height, renderer.width) != (image_size, image_size):
        raise ValueError(f"renderer renders {renderer.height}x{renderer.width}, expected {image_size}x{image_size}.")
    output = renderer.render_mesh(prior.mesh(params))
    # The renderer applies the prior's own rules (clipping included); this only stacks the channels,
    # in the order of caphuman.conditions.hint_layout.
    hint = torch.cat([output.normals, output.albedo, output.shaded], dim=1) * output.mask
    return HeadHint(hint=hint, mask=output.mask)


def hint_preview(hint: HeadHint | torch.Tensor, index: int = 0) -> Image.Image:
    """The three parts of one hint side by side (normals mapped from [-1, 1] to [0, 1]) as an RGB image.

    Args:
        hint: a :class:`HeadHint` or a (B, 9, H, W) tensor.
        index: which batch item.

    Returns:
        A (3W x H) PIL image: normals | albedo | shaded render.
    """
    tensor = hint.hint if isinstance(hint, HeadHint) else hint
    if tensor.ndim != 4 or tensor.shape[1] != HINT_CHANNELS:
        raise ValueError(f"expected a (B, {HINT_CHANNELS}, H, W) hint, got {tuple(tensor.shape)}.")
    item = tensor[index].detach().float().cpu()
    parts = [(item[NORMAL_CHANNELS] + 1.0) / 2.0, item[ALBEDO_CHANNELS], item[SHADED_CHANNELS]]
    strip = torch.cat([part.clamp(0.0, 1.0) for part in parts], dim=2)  # (3, H, 3W)
    pixels = (strip.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(pixels)
