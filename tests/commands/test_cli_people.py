"""`caphuman sample --person`: several people, each with their own hint and CapFace pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data

from caphuman.cli import main
from caphuman.pipeline import CapHumanPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {"face": folder / "astronaut.png", "flipped": folder / "flipped.jpg"}
    Image.fromarray(data.astronaut()).save(paths["face"])
    Image.fromarray(np.ascontiguousarray(data.astronaut()[:, ::-1])).save(paths["flipped"])
    return paths


def head_columns(hint_png: Path) -> float:
    """Mean column of the head in a hint preview's albedo third (normals | albedo | shaded)."""
    pixels = np.asarray(Image.open(hint_png).convert("RGB"))
    width = pixels.shape[1] // 3
    albedo = pixels[:, width : 2 * width]
    return float(np.nonzero(albedo.any(axis=2))[1].mean()) / width


def test_two_people_get_their_own_pass_side_by_side(photos, tmp_path, monkeypatch):
    seen = []
    original = CapHumanPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("people"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CapHumanPipeline, "__call__", spy)
    out = tmp_path / "two"
    code = main(
        [
            "sample",
            "--config",
            TINY,
            "--ref",
            str(photos["face"]),
            "--person",
            str(photos["flipped"]),
            "--prompt",
            "two people",
            "--yaw",
            "20",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    people = seen[-1]
    assert len(people) == 2 and all(len(person.references) == 1 for person in people)
    assert head_columns(out / "hint.png") < 0.5 < head_columns(out / "hint_person2.png")
    settings = yaml.safe_load((out / "config.yaml").read_text())
    assert settings["run"]["other_people"][0]["reference"] == str(photos["flipped"].resolve())
    assert Image.open(out / "image_000.png").size == (64, 64)


def test_one_person_keeps_the_single_person_call(photos, tmp_path, monkeypatch):
    seen = []
    original = CapHumanPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("people"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CapHumanPipeline, "__call__", spy)
    assert main(["sample", "--config", TINY, "--ref", str(photos["face"]), "--prompt", "x", "--out", str(tmp_path / "one"), "--device", "cpu"]) == 0
    assert seen == [None] and not (tmp_path / "one" / "hint_person2.png").exists()


@pytest.mark.parametrize("spec, message", [(["a.jpg", "b.jpg", "pose", "extra"], "REF \\[POSE \\[MODES\\]\\]"), (["missing.jpg"], "does not exist")])
def test_bad_person_specs_exit_2(photos, tmp_path, caplog, spec, message):
    spec = [str(tmp_path / spec[0]), *spec[1:]]
    assert main(["sample", "--config", TINY, "--ref", str(photos["face"]), "--person", *spec, "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    assert any(__import__("re").search(message, record.getMessage()) for record in caplog.records)
    assert not (tmp_path / "o").exists()
