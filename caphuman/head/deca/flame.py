"""The FLAME head model as a differentiable PyTorch layer (Li et al., SIGGRAPH Asia 2017).

FLAME is a linear-blend-skinned mesh (5023 vertices, 9976 triangles in FLAME 2020) with five
joints: 0 root (global head rotation), 1 neck, 2 jaw, 3 and 4 the eyeballs. A head is made in
three steps, written here from the paper's equations:

1. Blendshapes: v_shaped = T + S @ beta + E @ psi, with T the template (V, 3), S the identity
   shape basis and E the expression basis. In generic_model.pkl both live in one ``shapedirs``
   array (V, 3, 400): components 0..299 are shape, 300..399 expression. DECA uses the first 100
   shape and the first 50 expression components.
2. Pose correctives: v_posed = v_shaped + P @ vec(R_j - I for the non-root joints j = 1..4), i.e.
   36 numbers (4 joints x 3 x 3, row-major), with P = ``posedirs`` (V, 3, 36). The root rotation
   is excluded so a rigid head turn never deforms the head.
3. Linear blend skinning: the joints J = J_regressor @ v_shaped (5, 3) are rotated along the
   kinematic tree (``parents``); each joint's world transform G_j = G_parent(j) [R_j | J_j -
   J_parent(j)] is made relative to the rest pose (translation minus G_j's rotation times J_j),
   blended per vertex with the skinning ``weights`` (V, 5), and applied to v_posed.

FLAME's model frame: y up, x towards the subject's left (the image's right for a frontal head),
z out of the face (towards a camera looking at the face). That is the project's camera frame,
so DECA's orthographic camera needs no axis change (see caphuman/head/deca/deca_prior.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from caphuman.head.rotations import axis_angle_to_matrix

NUM_JOINTS = 5
ROOT, NECK, JAW, LEFT_EYE, RIGHT_EYE = range(NUM_JOINTS)
# generic_model.pkl's shapedirs hold 300 identity components before the expression ones.
FLAME_SHAPE_COMPONENTS = 300


@dataclass
class FlameModelData:
    """The arrays of a FLAME model file, as plain numpy (see caphuman/head/deca/files.py for loading).

    Attributes:
        v_template: (V, 3) float template vertices (metres).
        shapedirs: (V, 3, K) float blendshapes: identity components first, expression after
            ``shape_components`` (K = 400 in FLAME 2020).
        posedirs: (V, 3, 9 * (J - 1)) float pose-corrective blendshapes.
        j_regressor: (J, V) float joint regressor (dense).
        weights: (V, J) float skinning weights, rows summing to 1.
        parents: (J,) int parent joint of each joint, -1 for the root; parents[j] < j.
        faces: (F, 3) int triangle vertex indices (counter-clockwise seen from outside).
        shape_components: how many leading shapedirs components are identity shape.
    """

    v_template: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    faces: np.ndarray
    shape_components: int = FLAME_SHAPE_COMPONENTS


class FlameLayer(nn.Module):
    """FLAME vertices from shape, expression and per-joint rotations.

    Buffers (move with ``.to(device)``): the template, the used shape/expression components, the
    pose correctives, the joint regressor, the skinning weights and the faces.
    """

    def __init__(self, model: FlameModelData, num_shape: int = 100, num_expression: int = 50):
        super().__init__()
        total = model.shapedirs.shape[-1]
        first_expression = model.shape_components
        if num_shape > first_expression or first_expression + num_expression > total:
            raise ValueError(
                f"FLAME model has {first_expression} shape and {total - first_expression} expression components; "
                f"asked for {num_shape} and {num_expression}."
            )
        num_joints = model.j_regressor.shape[0]
        if model.posedirs.shape[-1] != 9 * (num_joints - 1):
            raise ValueError(f"posedirs has {model.posedirs.shape[-1]} components, expected {9 * (num_joints - 1)}.")
        parents = np.asarray(model.parents, dtype=np.int64)
        if parents[0] != -1 or any(parents[j] >= j or parents[j] < 0 for j in range(1, num_joints)):
            raise ValueError(f"FLAME kinematic tree must list parents before children with the root first; got {parents.tolist()}.")

        def as_float(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(array, dtype=np.float32))

        shapedirs = np.asarray(model.shapedirs)
        self.num_shape = num_shape
        self.num_expression = num_expression
        self.register_buffer("v_template", as_float(model.v_template))
        self.register_buffer("shape_dirs", as_float(shapedirs[:, :, :num_shape]))
        self.register_buffer("expression_dirs", as_float(shapedirs[:, :, first_expression : first_expression + num_expression]))
        num_vertices = model.v_template.shape[0]
        # (V, 3, P) -> (P, V * 3) so the correctives are one matrix product with the pose feature.
        self.register_buffer("pose_dirs", as_float(np.asarray(model.posedirs).reshape(num_vertices * 3, -1).T))
        self.register_buffer("j_regressor", as_float(model.j_regressor))
        self.register_buffer("skinning_weights", as_float(model.weights))
        self.register_buffer("faces", torch.as_tensor(np.asarray(model.faces, dtype=np.int64)))
        self.parents: list[int] = parents.tolist()

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def joint_rotations(
        self,
        global_rotation: torch.Tensor,
        jaw_axis_angle: torch.Tensor,
        neck_axis_angle: torch.Tensor | None = None,
        eyes_axis_angle: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stack FLAME's five joint rotations (DECA keeps neck and eyes at rest).

        Args:
            global_rotation: (B, 3, 3) root rotation matrix.
            jaw_axis_angle: (B, 3) jaw rotation, axis-angle radians.
            neck_axis_angle: (B, 3) or None (rest).
            eyes_axis_angle: (B, 6) left then right eyeball axis-angles, or None (rest).
        Returns:
            (B, 5, 3, 3) rotation matrices in joint order root, neck, jaw, left eye, right eye.
        """
        batch = global_rotation.shape[0]
        zeros = global_rotation.new_zeros(batch, 3)
        neck = neck_axis_angle if neck_axis_angle is not None else zeros
        eyes = eyes_axis_angle if eyes_axis_angle is not None else global_rotation.new_zeros(batch, 6)
        local = torch.stack([neck, jaw_axis_angle, eyes[:, :3], eyes[:, 3:]], dim=1)
        return torch.cat([global_rotation[:, None], axis_angle_to_matrix(local)], dim=1)

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """Posed FLAME vertices.

        Args:
            shape: (B, num_shape) identity coefficients.
            expression: (B, num_expression) expression coefficients.
            rotations: (B, J, 3, 3) joint rotation matrices (see :meth:`joint_rotations`).
        Returns:
            (B, V, 3) vertices in FLAME's model frame (metres; y up, z out of the face).
        """
        batch = shape.shape[0]
        if shape.shape[1] != self.num_shape or expression.shape[1] != self.num_expression:
            raise ValueError(
                f"FLAME layer expects {self.num_shape} shape and {self.num_expression} expression coefficients, "
                f"got {shape.shape[1]} and {expression.shape[1]}."
            )
        if rotations.shape[1:] != (self.num_joints, 3, 3):
            raise ValueError(f"rotations must be (B, {self.num_joints}, 3, 3), got {tuple(rotations.shape)}.")

        v_shaped = (
            self.v_template[None]
            + torch.einsum("bk,vck->bvc", shape, self.shape_dirs)
            + torch.einsum("bk,vck->bvc", expression, self.expression_dirs)
        )
        joints = torch.einsum("jv,bvc->bjc", self.j_regressor, v_shaped)

        identity = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
        pose_feature = (rotations[:, 1:] - identity).reshape(batch, -1)
        v_posed = v_shaped + (pose_feature @ self.pose_dirs).reshape(batch, -1, 3)

        # World transform of each joint along the kinematic tree, then relative to the rest pose.
        world_rotations: list[torch.Tensor] = []
        world_translations: list[torch.Tensor] = []
        for joint, parent in enumerate(self.parents):
            if parent < 0:
                world_rotations.append(rotations[:, joint])
                world_translations.append(joints[:, joint])
            else:
                offset = joints[:, joint] - joints[:, parent]
                world_rotations.append(world_rotations[parent] @ rotations[:, joint])
                world_translations.append(world_translations[parent] + (world_rotations[parent] @ offset[..., None])[..., 0])
        rotation = torch.stack(world_rotations, dim=1)  # (B, J, 3, 3)
        translation = torch.stack(world_translations, dim=1) - (rotation @ joints[..., None])[..., 0]  # (B, J, 3)

        blended_rotation = torch.einsum("vj,bjrc->bvrc", self.skinning_weights, rotation)
        blended_translation = torch.einsum("vj,bjc->bvc", self.skinning_weights, translation)
        return (blended_rotation @ v_posed[..., None])[..., 0] + blended_translation
