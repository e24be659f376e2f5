"""`caphuman sample` with the OpenPose ControlNet on the tiny config: map written and used, a
ready-made map, and user errors before any model loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import ControlNetModel
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from caphuman.cli import main
from caphuman.models.body_controlnet import original_controlnet_state_dict

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_backbone) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("body")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    controlnet = ControlNetModel.from_unet(tiny_backbone.unet, conditioning_channels=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random zero convs, so the branch changes the images
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out]:
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.3)
    save_file({k: v.contiguous() for k, v in original_controlnet_state_dict(controlnet).items()}, folder / "openpose.safetensors")
    ready = np.zeros((64, 64, 3), np.uint8)
    ready[20:40, 30:34] = (255, 0, 0)
    Image.fromarray(ready).save(folder / "ready_map.png")
    return {"photo": folder / "astronaut.png", "controlnet": folder / "openpose.safetensors", "map": folder / "ready_map.png"}


def sample(files, out: Path, *extra: str) -> int:
    return main(
        [
            "sample",
            "--config",
            TINY,
            "--ref",
            str(files["photo"]),
            "--prompt",
            "a person",
            "--steps",
            "2",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_body_control_draws_saves_and_uses_the_map(files, tmp_path):
    assert sample(files, tmp_path / "off") == 0
    assert not (tmp_path / "off" / "body_map.png").exists()
    assert sample(files, tmp_path / "on", "--body-controlnet", str(files["controlnet"]), "--body-control-strength", "1.0") == 0
    body_map = np.asarray(Image.open(tmp_path / "on" / "body_map.png"))
    assert body_map.shape == (64, 64, 3)
    assert (body_map == 255).all(axis=-1).any()  # face dots (default modes face,body)
    assert (body_map.max(axis=-1) != body_map.min(axis=-1)).any()  # coloured body
    settings = yaml.safe_load((tmp_path / "on" / "config.yaml").read_text())
    assert settings["sampling"]["body_control_strength"] == 1.0 and settings["model"]["body_controlnet"] == str(files["controlnet"])
    off = np.asarray(Image.open(tmp_path / "off" / "image_000.png")).astype(int)
    on = np.asarray(Image.open(tmp_path / "on" / "image_000.png")).astype(int)
    assert np.abs(on - off).max() > 0


def test_ready_made_map_is_used_as_given(files, tmp_path):
    assert (
        sample(
            files,
            tmp_path / "ready",
            "--body-controlnet",
            str(files["controlnet"]),
            "--body-control-strength",
            "0.5",
            "--body-map",
            str(files["map"]),
        )
        == 0
    )
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "ready" / "body_map.png")), np.asarray(Image.open(files["map"])))


@pytest.mark.parametrize(
    "extra",
    [
        ("--body-control-strength", "1.0"),  # no ControlNet configured
        ("--body-control-strength", "-1"),
        ("--body-modes", "body,feet"),
        ("--body-control-strength", "1.0", "--body-controlnet", "missing.pth"),
    ],
)
def test_user_errors_exit_2(files, tmp_path, extra):
    assert sample(files, tmp_path / "o", *extra) == 2
