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
from caphuman.head.deca import DecaHeadPrior
from caphuman.head.landmarks import load_flame_landmarks, project, to_image_fraction
from caphuman.head.params import HeadParams
from tests.test_deca import assets_dir  # noqa: F401  (module fixture: a tiny FLAME + DECA folder)


def deca_params() -> HeadParams:
    return HeadParams(
        shape=torch.zeros(1, 100), expression=torch.zeros(1, 50), jaw=torch.zeros(1, 3),
        rotation=torch.tensor([[25.0, -10.0, 5.0]]), camera=torch.tensor([[3.0, 0.1, -0.2]]),
        albedo=torch.zeros(1, 50), lighting=torch.zeros(1, 9, 3), backend="deca",
    )


def test_deca_landmarks_sit_on_the_posed_mesh(assets_dir, tmp_path):  # noqa: F811
    weights = tmp_path / "weights"
    shutil.copytree(assets_dir, weights)
    plain = DecaHeadPrior(weights)
    with pytest.raises(NotImplementedError, match="landmark_embedding.npy"):
        plain.landmarks68(deca_params())

    rng = np.random.default_rng(0)
    faces = rng.integers(0, plain.flame.faces.shape[0], size=68)
    bary = rng.dirichlet(np.ones(3), size=68).astype(np.float32)
    # DECA's file: np.save of a dict (an object array); the 2D set is unused here.
    np.save(weights / "deca" / "landmark_embedding.npy", {
        "full_lmk_faces_idx": faces[None], "full_lmk_bary_coords": bary[None],
        "static_lmk_faces_idx": faces[17:], "static_lmk_bary_coords": bary[17:],
    }, allow_pickle=True)
    prior = DecaHeadPrior(weights)
    ours = prior.landmarks68(deca_params())[0].numpy()
    vertices = prior.mesh(deca_params()).vertices[0].numpy()
    triangles = prior.flame.faces.cpu().numpy()[faces]
    expected = np.einsum("lc,lcd->ld", bary, vertices[triangles])[:, :2]
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
