"""The 9-channel head condition ("hint") CapFace reads: its channel layout, and the check of a given hint.

Channel layout, as published: normals (3, in [-1, 1]), albedo (3) and the Lambertian
spherical-harmonics shaded render (3); at image resolution; zero outside the head. The renderer
that makes it is :mod:`caphuman.head.hint`; everything that reads, stores or shows a hint uses
the names here.
"""

from __future__ import annotations

import torch

HINT_CHANNELS = 9
NORMAL_CHANNELS = slice(0, 3)
ALBEDO_CHANNELS = slice(3, 6)
SHADED_CHANNELS = slice(6, 9)


def check_hint(hint: torch.Tensor, batch_size: int, height: int, width: int) -> torch.Tensor:
    """Validate a hint and broadcast a single one over the batch.

    Args:
        hint: (9, H, W), (1, 9, H, W) or (batch_size, 9, H, W).
    Returns:
        (batch_size, 9, H, W).
    Raises:
        ValueError naming the expected shape.
    """
    if not isinstance(hint, torch.Tensor):
        raise ValueError(f"hint must be a torch.Tensor of shape (B, {HINT_CHANNELS}, {height}, {width}), got {type(hint).__name__}.")
    if hint.ndim == 3:
        hint = hint[None]
    if hint.ndim != 4 or hint.shape[1] != HINT_CHANNELS:
        raise ValueError(
            f"hint must have {HINT_CHANNELS} channels (normals, albedo, shaded render) as (B, {HINT_CHANNELS}, H, W); got shape {tuple(hint.shape)}."
        )
    if tuple(hint.shape[-2:]) != (height, width):
        raise ValueError(f"hint is {hint.shape[-2]}x{hint.shape[-1]} but the image is {height}x{width}; render the hint at the image size.")
    if hint.shape[0] not in (1, batch_size):
        raise ValueError(f"hint has batch {hint.shape[0]} but {batch_size} prompts were given; pass 1 hint or one per prompt.")
    if not torch.isfinite(hint).all():
        raise ValueError("hint contains NaN or infinite values.")
    return hint.expand(batch_size, -1, -1, -1)
