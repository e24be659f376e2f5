"""Similarity transforms (scale, rotation, translation) between 3D point sets, and their fitting.

Used to take a face's pose out of detected face-mesh points: by the morphable model's fit and by
the derivation of the mean face (Procrustes alignment of detections from several photos).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Similarity:
    """x_camera = scale * rotation @ x_model + translation (a row-vector batch uses ``x @ R.T``)."""

    scale: float
    rotation: np.ndarray  # (3, 3) proper rotation
    translation: np.ndarray  # (3,)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) model frame -> (N, 3) target frame."""
        return self.scale * points @ self.rotation.T + self.translation

    def invert(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) target frame -> (N, 3) model frame."""
        return (points - self.translation) @ self.rotation / self.scale


def umeyama(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> Similarity:
    """Weighted least-squares similarity transform target ~ scale * R @ source + t (Umeyama 1991).

    Args:
        source: (N, 3) points.
        target: (N, 3) corresponding points.
        weights: (N,) non-negative weights, or None for equal weights.
    """
    if weights is None:
        weights = np.ones(len(source))
    weights = weights / weights.sum()
    mean_source = weights @ source
    mean_target = weights @ target
    centred_source = source - mean_source
    centred_target = target - mean_target
    covariance = (centred_target * weights[:, None]).T @ centred_source  # (3, 3)
    u, singular, vt = np.linalg.svd(covariance)
    # A reflection would fit a mirrored face; force a proper rotation.
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rotation = (u * sign) @ vt
    variance = weights @ (centred_source**2).sum(axis=1)
    scale = float((singular * sign).sum() / variance)
    translation = mean_target - scale * rotation @ mean_source
    return Similarity(scale=scale, rotation=rotation, translation=translation)


def refine_similarity(source: np.ndarray, target: np.ndarray, weights: np.ndarray, depth_weight: float, initial: Similarity) -> Similarity:
    """Least-squares similarity like :func:`umeyama`, with the depth residuals down-weighted.

    mediapipe's depth is less reliable than its image positions: on turned heads its z comes out
    compressed, which pulls a plain 3D fit towards the frontal pose. Weighting z residuals by
    ``depth_weight`` (< 1) lets the image positions decide rotation while depth still breaks the
    front/back ambiguity of a 2D fit.

    Args:
        source: (N, 3) model points; target: (N, 3) observed points; weights: (N,) >= 0.
        depth_weight: factor on z residuals (1 gives the plain 3D fit).
        initial: starting point (e.g. the Umeyama solution).
    """
    from scipy.optimize import least_squares
    from scipy.spatial.transform import Rotation

    row_weights = np.sqrt(weights)[:, None] * np.array([1.0, 1.0, depth_weight])

    def unpack(x: np.ndarray) -> Similarity:
        return Similarity(scale=float(np.exp(x[3])), rotation=Rotation.from_rotvec(x[:3]).as_matrix(), translation=x[4:])

    def residuals(x: np.ndarray) -> np.ndarray:
        return ((unpack(x).apply(source) - target) * row_weights).ravel()

    start = np.concatenate([Rotation.from_matrix(initial.rotation).as_rotvec(), [math.log(initial.scale)], initial.translation])
    return unpack(least_squares(residuals, start, method="lm").x)
