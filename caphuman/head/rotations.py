"""Rotations of the head priors: yaw/pitch/roll angles and axis-angle vectors <-> rotation matrices.

Two parameterisations meet here:

- yaw, pitch, roll in degrees, the shared :class:`~caphuman.head.params.HeadParams` rotation
  (conventions in caphuman/head/params.py): R = Rz(roll) @ Rx(pitch) @ Ry(yaw).
- axis-angle vectors in radians (direction = axis, length = angle): FLAME's joints, DECA's global
  pose and the built-in model's jaw. Rodrigues' formula gives the matrix:
  R = I + sin(t) K + (1 - cos(t)) K^2 with t = |a| and K the cross-product matrix of a / t.

Axis-angle to matrix exists twice on purpose: :func:`axis_angle_to_matrix` (torch, batched) for
meshes, and :func:`axis_angle_to_matrix_numpy` (one float64 vector) for the built-in model's fit.
They evaluate the formula in a different order (and the numpy one returns the identity exactly
for angles below 1e-12), so their results may differ in the last bits; each caller keeps the one
its outputs were made with.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def yaw_pitch_roll_to_matrix(rotation_degrees: torch.Tensor) -> torch.Tensor:
    """(B, 3) yaw, pitch, roll in degrees -> (B, 3, 3) R = Rz(roll) @ Rx(pitch) @ Ry(yaw)."""
    yaw, pitch, roll = (torch.deg2rad(rotation_degrees[:, i]) for i in range(3))
    zeros, ones = torch.zeros_like(yaw), torch.ones_like(yaw)

    def stack(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    ry = stack([[cy, zeros, sy], [zeros, ones, zeros], [-sy, zeros, cy]])
    rx = stack([[ones, zeros, zeros], [zeros, cp, -sp], [zeros, sp, cp]])
    rz = stack([[cr, -sr, zeros], [sr, cr, zeros], [zeros, zeros, ones]])
    return rz @ rx @ ry


def matrix_to_yaw_pitch_roll(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`yaw_pitch_roll_to_matrix` for |pitch| < 90 degrees: (B, 3, 3) -> (B, 3) degrees."""
    # For R = Rz Rx Ry: R[2] = (-cp*sy, sp, cp*cy), R[0,1] = -sr*cp and R[1,1] = cr*cp, so each
    # angle is read from entries that do not mix in the other two.
    pitch = torch.asin(matrix[:, 2, 1].clamp(-1.0, 1.0))
    yaw = torch.atan2(-matrix[:, 2, 0], matrix[:, 2, 2])
    roll = torch.atan2(-matrix[:, 0, 1], matrix[:, 1, 1])
    return torch.rad2deg(torch.stack([yaw, pitch, roll], dim=-1))


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, batched: (..., 3) axis-angle vectors (radians) -> (..., 3, 3) rotation matrices."""
    angle = torch.linalg.vector_norm(axis_angle, dim=-1, keepdim=True)
    # A tiny floor keeps the division finite at a = 0, where K (and so R - I) is exactly zero.
    axis = axis_angle / angle.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zeros = torch.zeros_like(x)
    cross = torch.stack([zeros, -z, y, z, zeros, -x, -y, x, zeros], dim=-1).reshape(*axis.shape[:-1], 3, 3)
    sin = torch.sin(angle)[..., None]
    cos = torch.cos(angle)[..., None]
    identity = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(cross)
    return identity + sin * cross + (1.0 - cos) * (cross @ cross)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle (radians), for angles below pi."""
    skew = torch.stack(
        [matrix[..., 2, 1] - matrix[..., 1, 2], matrix[..., 0, 2] - matrix[..., 2, 0], matrix[..., 1, 0] - matrix[..., 0, 1]],
        dim=-1,
    )
    sin_times_two = torch.linalg.vector_norm(skew, dim=-1, keepdim=True)
    cos = ((matrix[..., 0, 0] + matrix[..., 1, 1] + matrix[..., 2, 2] - 1.0) / 2.0)[..., None]
    angle = torch.atan2(sin_times_two / 2.0, cos.clamp(-1.0, 1.0))
    # angle / (2 sin) -> 1/2 as the angle -> 0; the floor only guards the exact identity.
    return skew * (angle / sin_times_two.clamp_min(1e-12))


def axis_angle_to_matrix_numpy(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula for one vector in float64 numpy: (3,) axis-angle (radians) -> (3, 3).

    The built-in model's fit (many small evaluations, numerical jaw derivatives) uses this one;
    see the module docstring for why it is not the torch function.
    """
    angle = float(np.linalg.norm(axis_angle))
    if angle < 1e-12:
        return np.eye(3)
    k = axis_angle / angle
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross
