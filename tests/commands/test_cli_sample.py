"""`caphuman sample` end to end on the tiny config, and its handling of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data

from caphuman.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    astronaut = data.astronaut()
    paths = {
        "face": folder / "astronaut.png",
        "flipped": folder / "flipped.jpg",
        "blank": folder / "blank.png",
        "text": folder / "notes.png",
    }
    Image.fromarray(astronaut).save(paths["face"])
    Image.fromarray(astronaut[:, ::-1]).save(paths["flipped"])
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(paths["blank"])
    paths["text"].write_text("this is not an image")
    return paths


def test_sample_writes_images_hint_and_settings(photos, tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "sample",
            "--config",
            TINY,
            "--ref",
            str(photos["face"]),
            "--pose-ref",
            str(photos["flipped"]),
            "--modes",
            "pose",
            "--prompt",
            "a photo of a person, on the beach",
            "--num-images",
            "2",
            "--steps",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    images = sorted(out.glob("image_*.png"))
    assert [p.name for p in images] == ["image_000.png", "image_001.png"]
    assert Image.open(images[0]).size == (64, 64)
    assert Image.open(out / "hint.png").size[0] == 3 * Image.open(out / "hint.png").size[1]
    settings = yaml.safe_load((out / "config.yaml").read_text())
    assert settings["sampling"]["num_inference_steps"] == 2 and settings["sampling"]["seed"] == 3
    assert settings["run"]["modes"] == ["pose"] and settings["run"]["prompt"] == "a photo of a person, on the beach"
    # the flipped driver's yaw replaced the reference's: its sign is the mirror of the photo's own
    assert settings["run"]["head_rotation_degrees"][0] != 0


def test_explicit_yaw_moves_the_rendered_head(photos, tmp_path):
    hints = []
    for yaw in (-40, 40):
        out = tmp_path / f"yaw{yaw}"
        assert (
            main(
                [
                    "sample",
                    "--config",
                    TINY,
                    "--ref",
                    str(photos["face"]),
                    "--prompt",
                    "a person",
                    "--yaw",
                    str(yaw),
                    "--steps",
                    "1",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        hints.append(np.asarray(Image.open(out / "hint.png")).astype(float))
        assert yaml.safe_load((out / "config.yaml").read_text())["run"]["head_rotation_degrees"][0] == pytest.approx(yaw)
    assert np.abs(hints[0] - hints[1]).mean() > 1.0


@pytest.mark.parametrize(
    "which, message",
    [("missing", "missing.png"), ("text", "notes.png"), ("blank", "No face found in")],
)
def test_bad_inputs_exit_2_with_one_sentence(photos, tmp_path, which, message):
    path = str(tmp_path / "missing.png") if which == "missing" else str(photos[which])
    result = subprocess.run(
        [sys.executable, "-m", "caphuman.cli", "sample", "--config", TINY, "--ref", path, "--prompt", "x", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_mode_is_a_user_error(photos, tmp_path):
    assert (
        main(
            [
                "sample",
                "--config",
                TINY,
                "--ref",
                str(photos["face"]),
                "--pose-ref",
                str(photos["flipped"]),
                "--modes",
                "pose,hairstyle",
                "--prompt",
                "x",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
