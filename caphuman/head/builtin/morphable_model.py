"""A linear 3D morphable face model on mediapipe's 468-point face mesh, and its fitting.

Why mediapipe's own topology: the face detector (:mod:`caphuman.faces.detection`) returns the
478-point mediapipe face mesh for every face, and each of its points has the same meaning on
every face (point 1 is always the nose tip, 152 the chin, ...). So a model whose vertices are
those points is in dense correspondence with the detector for free; no landmark-to-model
registration is needed.

The model, in the frame of its mean face (centimetres; x right in the image, y up, z towards the
viewer; the frontal head has zero rotation):

    vertices = mean + identity + sum_e expression[e] * expression_basis[e] + jaw_displacement(jaw)

- ``mean`` and the triangles: derived in this repository from mediapipe's own detections on real
  photos and its tessellation edges, cached on first use (:mod:`caphuman.head.builtin.mean_face`).
- ``expression_basis``: displacement fields made geometrically from the mesh's semantic regions
  (mouth corners, lips, eyelids, brows); see :mod:`caphuman.head.builtin.expression_basis`.
- ``jaw``: axis-angle rotation (radians) of the lower jaw region about a hinge near the ears, as
  FLAME's jaw joint: x = opening (positive moves the chin down and back), y = sideways.
- ``identity``: per-vertex offsets (468 x 3), the part of a face that pose, expression and jaw do
  not explain. Expression and jaw are solved first (ridge least squares on the de-posed points),
  so identity is the remainder: an expression moves the expression coefficients, not identity.

Fitting (:meth:`MorphableFaceModel.fit`): a weighted similarity (Umeyama) fit of the model to
the detected 3D points on the vertices that expressions hardly move gives scale, rotation and
translation; expression and jaw follow by Gauss-Newton ridge least squares; the pose is refitted
once with the fitted expression; identity is what is left.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from caphuman.head.builtin.expression_basis import MOUTH_CORNERS_INNER, MOUTH_CORNERS_OUTER, build_expression_basis, lip_regions
from caphuman.head.builtin.mean_face import load_mean_face
from caphuman.head.builtin.similarity import Similarity, refine_similarity, umeyama
from caphuman.head.rotations import axis_angle_to_matrix, axis_angle_to_matrix_numpy

logger = logging.getLogger(__name__)

NUM_MODEL_VERTICES = 468  # mediapipe face-mesh points without the 10 iris points

JAW_NAMES: tuple[str, ...] = ("jaw_open", "jaw_sideways", "jaw_twist")

# Where the jaw turns (the temporomandibular joint, just in front of the ear): this far above the
# nose base (point 2), i.e. about level with the ear canal, and this far behind the rearmost
# face-mesh points (the side boundary at the cheeks, which mediapipe places in front of the ear).
_JAW_HINGE_ABOVE_NOSE_BASE_CM = 0.6
_JAW_HINGE_BEHIND_SIDE_CM = 0.6
NOSE_BASE = 2
# Width (cm) of the band in which jaw skinning weights go from 0 to 1, inside the mouth (the lips
# touch there, so it is sharp) and out at the cheeks (skin stretches, so it is soft).
_JAW_BLEND_MOUTH_CM = 0.05
_JAW_BLEND_CHEEK_CM = 1.5

# Pose weights: a vertex that some unit expression moves by more than this fraction of that
# expression's largest displacement is left out of the similarity fit (smoothly).
_STABLE_MOTION_FRACTION = 0.12

# Ridge weights relative to each column's diagonal entry of the normal equations. Small, because they only
# separate nearly collinear fields (e.g. jaw opening vs lips parting); the lateral jaw angles get
# more, since they are rare and weakly observed in a mesh that has no back of the head.
_EXPRESSION_RIDGE = 1e-3
_JAW_RIDGE = (1e-3, 3e-2, 3e-1)
_GAUSS_NEWTON_STEPS = 3
# Weight of depth residuals relative to image-plane ones in the pose fit (see refine_similarity).
_DEPTH_WEIGHT = 0.3
_POSE_EXPRESSION_ROUNDS = 6


@dataclass(frozen=True)
class FaceFit:
    """Result of fitting the model to one face's points (see :meth:`MorphableFaceModel.fit`).

    Attributes:
        pose: model frame -> the target points' frame.
        expression: (E,) coefficients of :data:`~caphuman.head.builtin.expression_basis.EXPRESSION_NAMES`.
        jaw: (3,) axis-angle (radians) of the jaw about its hinge.
        identity: (V, 3) per-vertex offsets in the model frame (cm).
        residual: root-mean-square distance (target units) between the posed model with identity
            removed and the target, a measure of how much identity there is to explain.
    """

    pose: Similarity
    expression: np.ndarray
    jaw: np.ndarray
    identity: np.ndarray
    residual: float


def jaw_hinge(vertices: np.ndarray) -> np.ndarray:
    """(3,) the jaw's hinge point (cm) for a mean face (see ``_JAW_HINGE_*``)."""
    return np.array(
        [
            0.0,
            vertices[NOSE_BASE, 1] + _JAW_HINGE_ABOVE_NOSE_BASE_CM,
            vertices[:, 2].min() - _JAW_HINGE_BEHIND_SIDE_CM,
        ]
    )


def mirror_indices(vertices: np.ndarray) -> np.ndarray:
    """(V,) index of each vertex's left-right mirror partner in a symmetric mesh (x -> -x)."""
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(vertices).query(vertices * np.array([-1.0, 1.0, 1.0]))
    return nearest.astype(np.int64)


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """(F, 3) triangles -> (E, 2) unique undirected edges, sorted."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(edges, axis=1), axis=0)


def jaw_skinning_weights(vertices: np.ndarray, hinge: np.ndarray) -> np.ndarray:
    """(V,) weight in [0, 1] with which each vertex follows the jaw.

    1 below the line where the lips meet (lower lip, chin, jaw line), 0 above it (upper lip, nose,
    cheekbones); the transition is sharp between the lips and soft out on the cheeks.
    """
    upper_lip, lower_lip, meeting = lip_regions(vertices)
    x = vertices[:, 0]
    mouth_half_width = abs(vertices[MOUTH_CORNERS_OUTER[1], 0])
    beyond_corner = np.clip((np.abs(x) - mouth_half_width) / 2.0, 0.0, 1.0)
    blend = _JAW_BLEND_MOUTH_CM + (_JAW_BLEND_CHEEK_CM - _JAW_BLEND_MOUTH_CM) * beyond_corner
    # Beyond the corners the dividing line rises towards the hinge, as the jaw bone does.
    hinge_height = hinge[1]
    corner_height = vertices[list(MOUTH_CORNERS_OUTER), 1].mean()
    line = np.where(np.abs(x) > mouth_half_width, corner_height + (hinge_height - corner_height) * beyond_corner, meeting)
    # A logistic step; the clip keeps exp() finite far from the line.
    weights = 1.0 / (1.0 + np.exp(np.clip(-(line - vertices[:, 1]) / (blend / 4.0), -50.0, 50.0)))
    weights[upper_lip] = 0.0
    weights[lower_lip] = 1.0
    # The mouth corners are where the lips meet: half with each.
    weights[list(MOUTH_CORNERS_OUTER + MOUTH_CORNERS_INNER)] = 0.5
    return weights


class MorphableFaceModel:
    """The mediapipe-topology morphable face model (see the module docstring).

    Attributes:
        mean: (V, 3) float64 mean-face vertices (cm), see :class:`caphuman.head.builtin.mean_face.MeanFace`.
        faces: (F, 3) int64 triangles, counter-clockwise from the front.
        expression_basis: (E, V, 3) float64 displacements per unit coefficient.
        jaw_weights: (V,) jaw skinning weights; ``jaw_hinge`` (3,) the hinge point.
        pose_weights: (V,) weights of the similarity fit (high where expressions do not move the face).
        mirror: (V,) left-right mirror partner of each vertex.
    """

    def __init__(self) -> None:
        template = load_mean_face()
        self.mean, self.faces = template.vertices, template.faces
        self.expression_basis = build_expression_basis(self.mean)
        self.jaw_hinge = jaw_hinge(self.mean)
        self.jaw_weights = jaw_skinning_weights(self.mean, self.jaw_hinge)
        self.mirror = template.mirror
        self.pose_weights = self._stable_weights()

    @property
    def num_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def num_expressions(self) -> int:
        return self.expression_basis.shape[0]

    def _stable_weights(self) -> np.ndarray:
        """Weights near 1 on vertices that no expression (and no 20-degree jaw opening) moves."""
        motions = [np.linalg.norm(field, axis=1) for field in self.expression_basis]
        motions.append(np.linalg.norm(self.jaw_displacement(np.array([math.radians(20.0), 0.0, 0.0])), axis=1))
        relative = np.max([motion / motion.max() for motion in motions], axis=0)
        return np.exp(-((relative / _STABLE_MOTION_FRACTION) ** 2))

    def jaw_displacement(self, jaw: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
        """(V, 3) displacement of the mean (or ``base``) vertices by a jaw rotation ``jaw`` (3,) radians."""
        base = self.mean if base is None else base
        rotated = (base - self.jaw_hinge) @ axis_angle_to_matrix_numpy(jaw).T + self.jaw_hinge
        return self.jaw_weights[:, None] * (rotated - base)

    def _jaw_jacobian(self, jaw: np.ndarray) -> np.ndarray:
        """(3, V, 3) derivative of :meth:`jaw_displacement` by each axis-angle component (numerical)."""
        step = 1e-4
        columns = []
        for axis in range(3):
            delta = np.zeros(3)
            delta[axis] = step
            columns.append((self.jaw_displacement(jaw + delta) - self.jaw_displacement(jaw - delta)) / (2 * step))
        return np.stack(columns)

    def expressed(self, expression: np.ndarray, jaw: np.ndarray) -> np.ndarray:
        """(V, 3) mean + expression + jaw displacements (no identity)."""
        return self.mean + np.tensordot(expression, self.expression_basis, axes=1) + self.jaw_displacement(jaw)

    def solve_expression(self, residual: np.ndarray, fit_jaw: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Expression and jaw that best explain a de-posed displacement from the mean.

        Gauss-Newton on  |residual - B e - J(jaw)|^2 + ridge terms, over all vertices.

        Args:
            residual: (V, 3) de-posed points minus ``mean`` (cm).
            fit_jaw: False keeps the jaw closed.

        Returns:
            expression (E,), jaw (3,) radians.
        """
        expression_columns = self.expression_basis.reshape(self.num_expressions, -1).T  # (3V, E)
        jaw = np.zeros(3)
        expression = np.zeros(self.num_expressions)
        target = residual.reshape(-1)
        steps = _GAUSS_NEWTON_STEPS if fit_jaw else 1
        for _ in range(steps):
            if fit_jaw:
                jacobian = self._jaw_jacobian(jaw).reshape(3, -1).T  # (3V, 3)
                design = np.concatenate([expression_columns, jacobian], axis=1)
                # Linearise the jaw at its current value: J(jaw + d) ~ J(jaw) + jacobian d.
                rhs = target - self.jaw_displacement(jaw).reshape(-1) + jacobian @ jaw
                ridge = np.array([_EXPRESSION_RIDGE] * self.num_expressions + list(_JAW_RIDGE))
            else:
                design, rhs = expression_columns, target
                ridge = np.full(self.num_expressions, _EXPRESSION_RIDGE)
            gram = design.T @ design
            # Each column's ridge is relative to its own energy, so a small field (an eyelid)
            # is not shrunk more than a large one (the jaw).
            solution = np.linalg.solve(gram + np.diag(ridge * np.diag(gram)), design.T @ rhs)
            expression = solution[: self.num_expressions]
            if fit_jaw:
                jaw = solution[self.num_expressions :]
        return expression, jaw

    def fit(self, points: np.ndarray, fit_jaw: bool = True) -> FaceFit:
        """Fit pose, expression, jaw and identity to one face's 3D points.

        Args:
            points: (V, 3) or (478, 3) points in a right-handed frame with y up and z towards the
                viewer (any units; the similarity's scale absorbs them). Iris points beyond the
                first 468 are ignored.
            fit_jaw: False keeps the jaw closed.

        Returns:
            A :class:`FaceFit`; ``pose.apply(mean + identity + expression fields + jaw)`` reproduces
            ``points`` exactly.
        """
        points = np.asarray(points, dtype=np.float64)[: self.num_vertices]
        pose = umeyama(self.mean, points, self.pose_weights)
        pose = refine_similarity(self.mean, points, self.pose_weights, _DEPTH_WEIGHT, pose)
        expression, jaw = self.solve_expression(pose.invert(points) - self.mean, fit_jaw)
        # With the expression known, every vertex can inform the pose; the stable ones still
        # dominate because expression misfit concentrates on the moving ones.
        # Alternating the two steps converges to the joint least-squares solution (each step
        # lowers it); a few rounds suffice because the expression's effect on the pose is small.
        weights = np.maximum(self.pose_weights, 0.25)
        for _ in range(_POSE_EXPRESSION_ROUNDS):
            pose = refine_similarity(self.expressed(expression, jaw), points, weights, _DEPTH_WEIGHT, pose)
            expression, jaw = self.solve_expression(pose.invert(points) - self.mean, fit_jaw)
        identity = pose.invert(points) - self.expressed(expression, jaw)
        residual = float(np.sqrt(((identity * pose.scale) ** 2).sum(axis=1).mean()))
        return FaceFit(pose=pose, expression=expression, jaw=jaw, identity=identity, residual=residual)

    # ---------------------------------------------------------------- batched torch evaluation

    def vertices(self, identity: torch.Tensor, expression: torch.Tensor, jaw: torch.Tensor) -> torch.Tensor:
        """Unposed vertices in the model frame (cm).

        Args:
            identity: (B, V*3) flattened per-vertex offsets.
            expression: (B, E) coefficients.
            jaw: (B, 3) axis-angle radians.

        Returns:
            (B, V, 3) in the dtype and device of ``expression``.
        """
        dtype, device = expression.dtype, expression.device
        mean = torch.as_tensor(self.mean, dtype=dtype, device=device)
        basis = torch.as_tensor(self.expression_basis, dtype=dtype, device=device)
        hinge = torch.as_tensor(self.jaw_hinge, dtype=dtype, device=device)
        weights = torch.as_tensor(self.jaw_weights, dtype=dtype, device=device)
        batch = expression.shape[0]
        rotated = (mean - hinge) @ axis_angle_to_matrix(jaw.to(dtype)).transpose(1, 2) + hinge  # (B, V, 3)
        jaw_offsets = weights[None, :, None] * (rotated - mean)
        return mean[None] + identity.to(dtype).view(batch, self.num_vertices, 3) + torch.einsum("be,evc->bvc", expression, basis) + jaw_offsets


@lru_cache(maxsize=1)
def default_model() -> MorphableFaceModel:
    """The shared model instance (the mean face comes from its cache after the first derivation)."""
    return MorphableFaceModel()
