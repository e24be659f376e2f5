"""Loading the OpenPose ControlNet: original single file (both key forms, .pth and .safetensors)
and diffusers folder round trips, parity with diffusers' own single-file loader, the full SD 1.5
layout, and refused inputs."""

from __future__ import annotations

import argparse

import pytest
import torch
from diffusers import ControlNetModel
from safetensors.torch import save_file

from caphuman.errors import CapHumanError, MissingWeightsError
from caphuman.models.architectures import SD15_UNET
from caphuman.models.body_controlnet import (
    controlnet_config_from_unet,
    load_body_controlnet,
    original_controlnet_state_dict,
)
from caphuman.weights.ldm_layout import controlnet_from_ldm


@pytest.fixture()
def random_controlnet(tiny_backbone) -> ControlNetModel:
    """A ControlNet of the tiny UNet's layout with every weight random (zero convs included)."""
    controlnet = ControlNetModel.from_unet(tiny_backbone.unet, conditioning_channels=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in controlnet.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return controlnet


def assert_same_weights(loaded: ControlNetModel, expected: ControlNetModel) -> None:
    ours, theirs = loaded.state_dict(), expected.state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_original_file_round_trips(tmp_path, tiny_backbone, random_controlnet, suffix):
    original = original_controlnet_state_dict(random_controlnet)
    assert all(key.startswith("control_model.") for key in original)
    assert any(key.startswith("control_model.input_hint_block.") for key in original)
    assert any(key.startswith("control_model.zero_convs.") for key in original)
    assert any(key.startswith("control_model.middle_block_out.") for key in original)
    path = tmp_path / f"control_openpose{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": original}, path)
    else:
        save_file({key: value.contiguous() for key, value in original.items()}, path)
    loaded = load_body_controlnet(path, unet_config=tiny_backbone.unet.config)
    assert_same_weights(loaded, random_controlnet)
    assert loaded.config.conditioning_channels == 3


def test_keys_without_control_model_prefix_convert_too(tiny_backbone, random_controlnet):
    bare = {key.removeprefix("control_model."): value for key, value in original_controlnet_state_dict(random_controlnet).items()}
    converted = controlnet_from_ldm(bare, controlnet_config_from_unet(tiny_backbone.unet.config))
    assert converted.keys() == random_controlnet.state_dict().keys()


def test_matches_diffusers_single_file_loader(tmp_path, tiny_backbone, random_controlnet):
    """diffusers' ControlNetModel.from_single_file (given the config folder, offline) reads our
    written file to the same weights as our loader."""
    config_dir = tmp_path / "config"
    random_controlnet.save_config(config_dir)
    path = tmp_path / "control.safetensors"
    save_file({k: v.contiguous() for k, v in original_controlnet_state_dict(random_controlnet).items()}, path)
    theirs = ControlNetModel.from_single_file(str(path), config=str(config_dir), local_files_only=True)
    assert_same_weights(load_body_controlnet(path, unet_config=tiny_backbone.unet.config), theirs)


def test_diffusers_folder_loads(tmp_path, random_controlnet):
    random_controlnet.save_pretrained(tmp_path / "control_v11p_sd15_openpose")
    assert_same_weights(load_body_controlnet(tmp_path / "control_v11p_sd15_openpose"), random_controlnet)


def test_full_sd15_layout_converts_without_gaps():
    """The SD 1.5 OpenPose ControlNet's names (built on the meta device: no memory) go to the
    original layout and back to exactly the model's keys, with the original file's hint stem."""
    from accelerate import init_empty_weights

    config = controlnet_config_from_unet(SD15_UNET)
    with init_empty_weights():
        controlnet = ControlNetModel.from_config(config)
    original = original_controlnet_state_dict(controlnet)
    assert tuple(original["control_model.input_hint_block.0.weight"].shape) == (16, 3, 3, 3)
    assert tuple(original["control_model.input_hint_block.14.weight"].shape) == (320, 256, 3, 3)
    assert len([key for key in original if key.startswith("control_model.zero_convs.")]) == 24  # 12 convs
    assert controlnet_from_ldm(original, config).keys() == controlnet.state_dict().keys()


def test_bad_files_are_refused(tmp_path, tiny_backbone, random_controlnet):
    with pytest.raises(MissingWeightsError, match="OpenPose ControlNet"):
        load_body_controlnet(tmp_path / "absent.pth")
    # A ControlNet of another architecture (SD 1.5's names, tiny shapes do not fit SD 1.5).
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in original_controlnet_state_dict(random_controlnet).items()}, path)
    with pytest.raises(CapHumanError, match="tiny.safetensors"):
        load_body_controlnet(path)

    # A pickle with a non-tensor object: weights_only refuses to build it.
    pickled = tmp_path / "evil.pth"
    torch.save({"control_model.x": torch.zeros(1), "payload": argparse.Namespace(run="code")}, pickled)
    with pytest.raises(CapHumanError, match="evil.pth"):
        load_body_controlnet(pickled, unet_config=tiny_backbone.unet.config)


def test_doctor_checks_both_forms(tmp_path, random_controlnet):
    from caphuman.weights.checks import STATUS_MALFORMED, STATUS_MISSING, STATUS_PRESENT, check_entry
    from caphuman.weights.registry import load_manifest

    entries = load_manifest()
    single, folder = entries["body_controlnet"], entries["body_controlnet_diffusers"]
    assert single.hf_repo == "lllyasviel/ControlNet-v1-1" and single.hf_filename == "control_v11p_sd15_openpose.pth"
    assert folder.hf_repo == "lllyasviel/control_v11p_sd15_openpose"
    assert check_entry(single, tmp_path).status == STATUS_MISSING
    torch.save(original_controlnet_state_dict(random_controlnet), tmp_path / single.path)
    assert check_entry(single, tmp_path).status == STATUS_PRESENT
    random_controlnet.save_pretrained(tmp_path / folder.path)
    assert check_entry(folder, tmp_path).status == STATUS_PRESENT
    torch.save({"model.diffusion_model.conv_in.weight": torch.zeros(1)}, tmp_path / single.path)
    assert check_entry(single, tmp_path).status == STATUS_MALFORMED
