"""How `caphuman` talks to a user (issue 10): which face and which file an error names, one
'Found N faces' line, warnings for a cut prompt and an untested pose, only our own lines in a
normal run, and a --help that does not load the heavy libraries."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from caphuman.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    astronaut = data.astronaut()
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256)))
    paths = {"face": folder / "face.png", "blank": folder / "blank_pose.png", "two": folder / "two_people.png"}
    Image.fromarray(astronaut).save(paths["face"])
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(paths["blank"])
    # Two faces of different sizes side by side (the larger is face 0).
    two = np.full((512, 768, 3), 255, np.uint8)
    two[:512, :512] = astronaut
    two[128:384, 512:768] = small[:, ::-1]
    Image.fromarray(two).save(paths["two"])
    return paths


def test_an_error_about_the_pose_photo_names_it(photos, tmp_path, caplog):
    code = main(
        [
            "sample",
            "--config",
            TINY,
            "--ref",
            str(photos["face"]),
            "--pose-ref",
            str(photos["blank"]),
            "--prompt",
            "x",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert str(photos["blank"]) in errors[-1]
    assert not (tmp_path / "o").exists()


def test_face_index_is_for_ref_and_pose_face_index_for_pose_ref(photos, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    # --face-index 1 would be out of range for the one-face --ref ...
    assert (
        main(
            [
                "sample",
                "--config",
                TINY,
                "--ref",
                str(photos["face"]),
                "--pose-ref",
                str(photos["two"]),
                "--face-index",
                "1",
                "--prompt",
                "x",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 2
    )
    assert "--face-index" in caplog.records[-1].getMessage() and str(photos["face"]) in caplog.records[-1].getMessage()
    caplog.clear()
    # ... while --pose-face-index 1 picks the second face of the pose photo, announced once,
    # and a long prompt and a turn beyond the tested range are warned about.
    long_prompt = "a photo of a person " + " ".join(f"with detail number {i}" for i in range(40))
    assert (
        main(
            [
                "sample",
                "--config",
                TINY,
                "--ref",
                str(photos["face"]),
                "--pose-ref",
                str(photos["two"]),
                "--pose-face-index",
                "1",
                "--yaw",
                "70",
                "--prompt",
                long_prompt,
                "--steps",
                "1",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    messages = [r.getMessage() for r in caplog.records]
    found = [m for m in messages if m.startswith("Found 2 faces")]
    assert len(found) == 1 and str(photos["two"]) in found[0] and "--pose-face-index" in found[0]
    assert any("reads only" in m and "tokens" in m for m in messages)
    assert any("yaw 70" in m and "tested" in m for m in messages)


def test_a_normal_run_prints_only_our_lines(photos, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "caphuman.cli",
            "sample",
            "--config",
            TINY,
            "--ref",
            str(photos["face"]),
            "--prompt",
            "x",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    # Progress bars redraw with carriage returns; every other line is one of ours.
    lines = [line for line in re.split(r"[\r\n]", result.stderr) if line.strip() and "it/s]" not in line and "%|" not in line]
    assert lines and all(re.match(r"(INFO|WARNING) caphuman", line) for line in lines), lines


def test_help_does_not_import_the_heavy_libraries():
    code = (
        "import sys\nfrom caphuman.cli import build_parser\nbuild_parser().format_help()\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'mediapipe', 'lightning', 'cv2') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"
