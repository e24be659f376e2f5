"""Head-control metrics: how far the head re-estimated from a generated image is from the request.

The paper re-estimates DECA coefficients from each generated image and reports the RMSE against
the requested ones for shape, pose, expression and lighting. Here the re-estimate comes from the
run's head prior (DECA/FLAME when its assets are present, the built-in prior offline), so the
groups are that prior's parameters (:class:`caphuman.head.params.HeadParams`):

- shape: identity shape coefficients (FLAME betas for DECA; per-vertex offsets in cm for the
  built-in prior);
- pose: global head rotation (yaw, pitch, roll) in radians (DECA's pose is axis-angle radians);
- expression: expression coefficients followed by the jaw rotation (axis-angle radians);
- lighting: the 27 spherical-harmonics coefficients (9 x RGB).

RMSE of a group = sqrt(mean((requested - estimated)^2)) over that group's values. Units differ
between priors, so compare RMSEs only between methods scored with the same prior.

Head-pose error is the geodesic angle between the requested and the estimated head rotation
(degrees): the single rotation that takes one head orientation to the other, independent of how
the error splits between yaw, pitch and roll.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from caphuman.head.params import HeadParams
from caphuman.head.rotations import yaw_pitch_roll_to_matrix

COEFFICIENT_GROUPS = ("shape", "pose", "expression", "lighting")


@dataclass
class HeadErrors:
    """Errors of one generated head against its request (floats; NaN when not measurable).

    Attributes:
        shape_rmse, pose_rmse, expression_rmse, lighting_rmse: per-group RMSE (see module docstring).
        pose_error_deg: geodesic rotation error in degrees.
        estimated_yaw, estimated_pitch, estimated_roll: the re-estimated angles (degrees).
    """

    shape_rmse: float
    pose_rmse: float
    expression_rmse: float
    lighting_rmse: float
    pose_error_deg: float
    estimated_yaw: float
    estimated_pitch: float
    estimated_roll: float

    @classmethod
    def missing(cls) -> HeadErrors:
        nan = float("nan")
        return cls(nan, nan, nan, nan, nan, nan, nan, nan)


def coefficient_groups(params: HeadParams) -> dict[str, np.ndarray]:
    """The values of each RMSE group of item 0 of ``params``, flattened to float64 vectors."""
    return {
        "shape": params.shape[0].detach().double().flatten().cpu().numpy(),
        "pose": np.deg2rad(params.rotation[0].detach().double().cpu().numpy()),
        "expression": torch.cat([params.expression[0].flatten(), params.jaw[0].flatten()]).detach().double().cpu().numpy(),
        "lighting": params.lighting[0].detach().double().flatten().cpu().numpy(),
    }


def rmse(requested: np.ndarray, estimated: np.ndarray) -> float:
    """sqrt(mean((requested - estimated)^2)) of two arrays of the same shape."""
    requested = np.asarray(requested, dtype=np.float64)
    estimated = np.asarray(estimated, dtype=np.float64)
    if requested.shape != estimated.shape:
        raise ValueError(f"cannot compare coefficient arrays of shapes {requested.shape} and {estimated.shape}")
    if requested.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((requested - estimated) ** 2)))


def pose_error_degrees(requested_degrees: np.ndarray | torch.Tensor, estimated_degrees: np.ndarray | torch.Tensor) -> float:
    """Geodesic angle (degrees) between two (yaw, pitch, roll) rotations given in degrees."""
    angles = torch.as_tensor(np.stack([np.asarray(requested_degrees, dtype=np.float64), np.asarray(estimated_degrees, dtype=np.float64)]))
    matrices = yaw_pitch_roll_to_matrix(angles)
    relative = matrices[0].T @ matrices[1]
    cosine = ((torch.trace(relative) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return float(torch.rad2deg(torch.acos(cosine)))


def head_errors(requested: HeadParams, estimated: HeadParams) -> HeadErrors:
    """Per-group RMSE and pose error of item 0 of ``estimated`` against item 0 of ``requested``."""
    if requested.backend != estimated.backend:
        raise ValueError(f"requested parameters come from the '{requested.backend}' prior, estimated from '{estimated.backend}'")
    wanted, found = coefficient_groups(requested), coefficient_groups(estimated)
    angles = estimated.rotation[0].detach().double().cpu().numpy()
    return HeadErrors(
        shape_rmse=rmse(wanted["shape"], found["shape"]),
        pose_rmse=rmse(wanted["pose"], found["pose"]),
        expression_rmse=rmse(wanted["expression"], found["expression"]),
        lighting_rmse=rmse(wanted["lighting"], found["lighting"]),
        pose_error_deg=pose_error_degrees(requested.rotation[0].detach().double().cpu().numpy(), angles),
        estimated_yaw=float(angles[0]),
        estimated_pitch=float(angles[1]),
        estimated_roll=float(angles[2]),
    )


__all__ = ["COEFFICIENT_GROUPS", "HeadErrors", "coefficient_groups", "head_errors", "pose_error_degrees", "rmse"]
