"""`caphuman inspect`: what the model sees, written as files; the FaceNet input is MTCNN's crop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from caphuman.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")
PUBLISHED = str(ROOT / "configs" / "caphuman_sd15.yaml")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def mtcnn_crop(photo) -> np.ndarray:
    """facenet-pytorch's own MTCNN(image_size=160, margin=0) output, back in pixels."""
    from facenet_pytorch import MTCNN

    prewhitened = MTCNN(image_size=160, margin=0)(Image.open(photo))
    return (prewhitened * 128.0 + 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_inspect_tiny_config_writes_every_model_input(photo, mtcnn_crop, tmp_path):
    out = tmp_path / "inspect"
    assert main(["inspect", "--config", TINY, "--ref", str(photo), "--yaw", "30", "--out", str(out), "--device", "cpu"]) == 0

    facenet = read_png(out / "facenet_input.png")
    assert facenet.shape == (160, 160, 3)
    assert np.abs(facenet.astype(int) - mtcnn_crop.astype(int)).max() <= 2  # within 2/255 per pixel
    clip = read_png(out / "clip_input.png")
    mask = read_png(out / "parsing_mask.png")
    assert clip.shape == (224, 224, 3) and mask.shape == (512, 512)
    # Non-face pixels are white in CLIP's input; the mask's face pixels are 255 and cover the face.
    assert set(np.unique(mask)) == {0, 255} and mask[110, 225] == 255 and mask[0, 0] == 0
    assert (clip[0, 0] == 255).all() and (clip[51, 98] < 250).any()
    params = json.loads((out / "head_params.json").read_text())
    assert params["backend"] == "builtin" and params["rotation"][0][0] == pytest.approx(30.0)
    for name in ("hint_normals.png", "hint_albedo.png", "hint_shaded.png"):
        group = read_png(out / name)
        assert group.shape == (64, 64, 3)  # the tiny config's sampling size
    # The rendered head is in the image (not all background) and the normals' background is 0 -> grey.
    normals = read_png(out / "hint_normals.png").astype(int)
    assert (np.abs(normals - 128) > 30).any() and (np.abs(normals[0, 0] - 128) <= 1).all()
    summary = json.loads((out / "inspect.json").read_text())
    assert summary["skipped"] == {} and summary["written"]["facenet_input.png"] == "tiny crop: mtcnn"


def test_inspect_published_config_without_weights_writes_what_needs_no_file(photo, mtcnn_crop, tmp_path, caplog):
    out = tmp_path / "published"
    weights = tmp_path / "empty-weights"
    weights.mkdir()
    code = main(["inspect", "--config", PUBLISHED, "--weights", str(weights), "--ref", str(photo), "--out", str(out), "--device", "cpu"])
    assert code == 0
    facenet = read_png(out / "facenet_input.png")
    assert np.abs(facenet.astype(int) - mtcnn_crop.astype(int)).max() <= 2
    assert read_png(out / "head_input.png").shape == (512, 512, 3)
    summary = json.loads((out / "inspect.json").read_text())
    assert set(summary["skipped"]) == {
        "parsing_mask.png",
        "clip_input.png",
        "head_params.json",
        "hint_normals.png",
        "hint_albedo.png",
        "hint_shaded.png",
    }
    assert summary["skipped"]["clip_input.png"].endswith("face-parsing/79999_iter.pth")
    assert summary["skipped"]["head_params.json"].endswith("deca/deca_model.tar")
    assert not (out / "clip_input.png").exists() and not (out / "head_params.json").exists()
    skip_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped")]
    assert len(skip_lines) == 2 and "79999_iter.pth" in skip_lines[0] and "deca_model.tar" in skip_lines[1]


def test_inspect_missing_photo_is_a_user_error(tmp_path):
    assert main(["inspect", "--config", TINY, "--ref", str(tmp_path / "none.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_inspect_pose_photo_without_a_face_names_the_file(photo, tmp_path, caplog):
    pose = tmp_path / "coffee_cup.png"
    Image.fromarray(data.coffee()).save(pose)
    code = main(["inspect", "--config", TINY, "--ref", str(photo), "--pose-ref", str(pose), "--out", str(tmp_path / "o")])
    assert code == 2
    assert any("No face found in" in record.getMessage() and "coffee_cup.png" in record.getMessage() for record in caplog.records)
