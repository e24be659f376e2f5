"""Several people in one image: one condition (identity + head hint) per person.

As in the official two-person demo, every person gets their own CapFace pass (their own identity
tokens and hint, hence their own predicted face mask); each pass's residuals are gated by that
person's mask and the gated residuals are summed before they enter the UNet. With one person this
is exactly the single-person pipeline.

Each person's hint is rendered on the full image canvas, so where their head lands in the hint is
where they appear. :func:`arrange_in_row` places heads that have no position of their own (no pose
photo) side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from caphuman.conditions.identity import IdentityInputs, ReferenceFace
from caphuman.head.params import HeadParams


@dataclass
class PersonCondition:
    """One person: who (reference faces, precomputed identity inputs OR precomputed identity
    tokens) and where/how (hint).

    Attributes:
        hint: (9, H, W), (1, 9, H, W) or (B, 9, H, W) head condition on the full image canvas.
        references: reference faces of this person (one or several photos), or
        identity: precomputed :class:`IdentityInputs` for this person, or
        identity_embeds: precomputed (1 or B, T, D) identity tokens (CapHumanPipeline.encode_identity).
    """

    hint: torch.Tensor
    references: list[ReferenceFace] | None = None
    identity: IdentityInputs | None = None
    identity_embeds: torch.Tensor | None = None


def arrange_in_row(heads: list[HeadParams], margin: float = 0.1) -> list[HeadParams]:
    """Copies of ``heads`` placed side by side, left to right, at one common size.

    Each head keeps its pose, expression and lighting; its camera is set so that person i is
    centred in the i-th of len(heads) equal vertical strips, scaled down by the number of people
    (a head that filled the frame alone fills its strip), and vertically where the first head is.
    One head is returned unchanged.
    """
    if len(heads) <= 1:
        return [head.clone() for head in heads]
    count = len(heads)
    strip = 2.0 / count  # normalised image x spans [-1, 1]
    placed = []
    for index, head in enumerate(heads):
        out = head.clone()
        out.camera[:, 0] = heads[0].camera[:, 0] * (1.0 - margin) / count
        out.camera[:, 1] = -1.0 + strip * (index + 0.5)
        out.camera[:, 2] = heads[0].camera[:, 2] / count
        placed.append(out)
    return placed
