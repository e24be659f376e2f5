"""`caphuman sample`'s options from the official script: --a-prompt, --sd-ckpt/--vae-ckpt, size, eta."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from PIL import Image
from skimage import data

from caphuman.cli import main
from caphuman.commands.sample import add_arguments, config_from_args

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--ref", "face.jpg", "--prompt", "p", *argv])


def test_checkpoint_flags_resolve_from_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_style.safetensors").write_bytes(b"")
    (tmp_path / "vae").mkdir()
    config = config_from_args(
        parse("--config", TINY, "--sd-ckpt", "my_style.safetensors", "--vae-ckpt", "vae", "--height", "48", "--width", "80", "--eta", "0.5")
    )
    assert config.model.stable_diffusion == str(tmp_path / "my_style.safetensors")
    assert config.model.vae == str(tmp_path / "vae")
    assert (config.sampling.height, config.sampling.width, config.sampling.eta) == (48, 80, 0.5)


def test_missing_checkpoint_and_bad_size_are_user_errors(tmp_path):
    common = ["sample", "--config", TINY, "--ref", str(tmp_path / "x.png"), "--prompt", "p", "--out", str(tmp_path / "o")]
    assert main([*common, "--sd-ckpt", str(tmp_path / "missing.safetensors")]) == 2
    assert main([*common, "--height", "50"]) == 2  # not a multiple of 8
    assert main([*common, "--eta", "-1"]) == 2
    assert not (tmp_path / "o").exists()


def test_size_and_added_prompt_reach_the_run(tmp_path):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    out = tmp_path / "run"
    code = main(
        [
            "sample",
            "--config",
            TINY,
            "--ref",
            str(photo),
            "--prompt",
            "a photo of a person",
            "--a-prompt",
            "best quality",
            "--height",
            "48",
            "--width",
            "80",
            "--eta",
            "0.3",
            "--steps",
            "2",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert Image.open(out / "image_000.png").size == (80, 48)
    assert Image.open(out / "hint.png").size == (3 * 80, 48)
    settings = yaml.safe_load((out / "config.yaml").read_text())
    assert settings["run"]["a_prompt"] == "best quality" and settings["sampling"]["eta"] == 0.3
    assert settings["identity"]["clip_crop"] == "official" and settings["head"]["photo_fit"] == "squash"
