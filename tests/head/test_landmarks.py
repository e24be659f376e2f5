"""The head's 68 face landmarks for the OpenPose map's face dots: DECA's FLAME landmark embedding
(read safely, placed on the posed mesh) and the shared projection."""

from __future__ import annotations

import argparse
import pickle
import shutil

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from caphuman.errors import CapHumanError
from caphuman.head.deca.deca_prior import DecaHeadPrior
from caphuman.head.deca.flame_landmarks import load_flame_landmarks
from caphuman.head.landmarks import project, to_image_fraction
from caphuman.head.params import HeadParams
from tests.head.test_deca import assets_dir  # noqa: F401  (module fixture: a tiny FLAME + DECA folder)


def deca_params(yaw: float = 25.0, pitch: float = -10.0, roll: float = 5.0) -> HeadParams:
    return HeadParams(
        shape=torch.zeros(1, 100),
        expression=torch.zeros(1, 50),
        jaw=torch.zeros(1, 3),
        rotation=torch.tensor([[yaw, pitch, roll]]),
        camera=torch.tensor([[3.0, 0.1, -0.2]]),
        albedo=torch.zeros(1, 50),
        lighting=torch.zeros(1, 9, 3),
        backend="deca",
    )


@pytest.mark.parametrize(
    # Rows of DECA's contour table, worked out by hand from FLAME._find_dynamic_lmk_idx_and_bcoords
    # (angle about y = yaw when pitch = roll = 0; 0..39 kept, negative -> 39 - angle, < -39 -> 78).
    "yaw, row",
    [(0.0, 0), (20.0, 20), (-20.0, 59), (50.0, 39), (-50.0, 78), (-12.4, 51)],
)
def test_deca_landmarks_sit_on_the_posed_mesh_with_the_yaw_contour(assets_dir, tmp_path, yaw, row):  # noqa: F811
    weights = tmp_path / "weights"
    shutil.copytree(assets_dir, weights)
    plain = DecaHeadPrior(weights)
    with pytest.raises(NotImplementedError, match="landmark_embedding.npy"):
        plain.landmarks68(deca_params())

    rng = np.random.default_rng(0)
    num_faces = plain.flame.faces.shape[0]
    static_faces = rng.integers(0, num_faces, size=51)
    static_bary = rng.dirichlet(np.ones(3), size=51).astype(np.float32)
    contour_faces = rng.integers(0, num_faces, size=(79, 17))
    contour_bary = rng.dirichlet(np.ones(3), size=(79, 17)).astype(np.float32)
    # DECA's file: np.save of a dict, the contour table as torch tensors (as DECA's FLAME reads it).
    np.save(
        weights / "deca" / "landmark_embedding.npy",
        {
            "static_lmk_faces_idx": static_faces,
            "static_lmk_bary_coords": static_bary,
            "dynamic_lmk_faces_idx": torch.from_numpy(contour_faces),
            "dynamic_lmk_bary_coords": torch.from_numpy(contour_bary),
            "full_lmk_faces_idx": static_faces[None],
            "full_lmk_bary_coords": static_bary[None],
        },
        allow_pickle=True,
    )
    prior = DecaHeadPrior(weights)
    params = deca_params(yaw=yaw, pitch=0.0, roll=0.0)
    ours = prior.landmarks68(params)[0].numpy()
    vertices = prior.mesh(params).vertices[0].numpy()
    triangles = prior.flame.faces.cpu().numpy()
    faces = np.concatenate([contour_faces[row], static_faces])
    bary = np.concatenate([contour_bary[row], static_bary])
    expected = np.einsum("lc,lcd->ld", bary, vertices[triangles[faces]])[:, :2]
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_landmark_file_refuses_code_and_wrong_contents(tmp_path):
    evil = tmp_path / "evil.npy"
    with open(evil, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(argparse.Namespace(x=1), stream)
    with pytest.raises(CapHumanError, match="does not allow"):
        load_flame_landmarks(evil)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((68, 3)))
    with pytest.raises(CapHumanError, match="not DECA's landmark embedding"):
        load_flame_landmarks(wrong)


def test_projection_follows_rotation_then_orthographic_camera():
    points = torch.tensor([[[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]])
    params = deca_params()
    rotation = Rotation.from_euler("ZXY", [5.0, -10.0, 25.0], degrees=True).as_matrix()  # R = Rz Rx Ry
    expected = 3.0 * (points[0].numpy() @ rotation.T)[:, :2] + np.array([0.1, -0.2])
    np.testing.assert_allclose(project(points, params)[0].numpy(), expected, atol=1e-5)
    # Camera coordinates (y up, [-1, 1]) -> image fractions (y down, [0, 1]).
    np.testing.assert_allclose(to_image_fraction(np.array([[-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]])), [[0, 0], [1, 1], [0.5, 0.5]])
