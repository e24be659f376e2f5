"""caphuman.ckpt import: convert(export(model)) == model, and named errors for bad keys."""

from __future__ import annotations

import pytest
import torch

from caphuman.errors import CapHumanError
from caphuman.models.adapter import CapHumanAdapter
from caphuman.weights.original_checkpoint import convert_original_checkpoint, convert_original_state_dict, export_original


@pytest.fixture(scope="module")
def adapter(tiny_backbone) -> CapHumanAdapter:
    model = CapHumanAdapter.from_unet(tiny_backbone.unet, 512, tiny_backbone.image_encoder.config.hidden_size, seed=0)
    # Random values everywhere (the zero convs too), so a swapped tensor cannot go unnoticed.
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def original(adapter, tiny_backbone) -> dict[str, torch.Tensor]:
    """The tiny adapter in the original key layout, plus frozen-backbone keys the converter skips."""
    state = dict(export_original(adapter))
    state["model.diffusion_model.out.2.weight"] = torch.zeros(4, 8, 3, 3)
    state["first_stage_model.encoder.conv_in.weight"] = torch.zeros(8, 3, 3, 3)
    state["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.zeros(32)
    state["control_cond_stage_model.transformer.vision_model.post_layernorm.weight"] = torch.zeros(32)
    state["betas"] = torch.zeros(1000)
    return state


def test_original_key_names(original):
    # Names from the reference code (src/cldm/cldm.py CapFace + CapHuman), written out by hand.
    for key in (
        "control_model.time_embed.0.weight",
        "control_model.input_blocks.0.0.weight",
        "control_model.input_blocks.1.0.in_layers.0.weight",
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "control_model.input_hint_block.0.weight",
        "control_model.input_hint_block.2.weight",
        "control_model.input_hint_block.14.weight",
        "control_model.zero_convs.0.0.weight",
        "control_model.middle_block.1.proj_out.weight",
        "control_model.middle_block_out.0.weight",
        "control_model.mask_predict.0.weight",
        "id_linear.weight",
        "img_linear.bias",
    ):
        assert key in original, key
    assert original["control_model.input_hint_block.0.weight"].shape[1] == 9
    assert tuple(original["id_linear.weight"].shape) == (32, 512)
    assert tuple(original["control_model.mask_predict.0.weight"].shape) == (1, 8, 3, 3)


def test_convert_of_export_is_identity(tmp_path, adapter, original):
    path = tmp_path / "caphuman.ckpt"
    torch.save({"state_dict": original, "epoch": 3}, path)
    out = tmp_path / "converted"
    report = convert_original_checkpoint(path, out, capface_config=adapter.capface.config)
    assert report.skipped == 5
    loaded = CapHumanAdapter.from_pretrained(out)
    expected = adapter.state_dict()
    actual = loaded.state_dict()
    assert set(actual) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)


def test_renamed_key_is_reported_by_name(adapter, original):
    state = dict(original)
    state["control_model.zero_conv.3.0.weight"] = state.pop("control_model.zero_convs.3.0.weight")
    with pytest.raises(CapHumanError, match=r"zero_conv\.3\.0\.weight"):
        convert_original_state_dict(state, "caphuman.ckpt", adapter.capface.config)
    state = dict(original)
    state["idlinear.weight"] = state.pop("id_linear.weight")
    with pytest.raises(CapHumanError, match=r"idlinear\.weight"):
        convert_original_state_dict(state, "caphuman.ckpt", adapter.capface.config)


def test_missing_key_is_reported_by_name(adapter, original):
    for key in (
        "control_model.input_blocks.1.0.in_layers.0.weight",
        "control_model.mask_predict.0.bias",
        "control_model.time_embed.0.weight",
        "img_linear.weight",
    ):
        state = dict(original)
        del state[key]
        with pytest.raises(CapHumanError, match=key.replace(".", r"\.")):
            convert_original_state_dict(state, "caphuman.ckpt", adapter.capface.config)


def test_cli_convert_missing_file_exits_2(tmp_path, monkeypatch, caplog):
    from caphuman import cli

    monkeypatch.setattr(cli, "COMMANDS", {"convert": "caphuman.commands.convert"})
    code = cli.main(["convert", "--from", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "out")])
    assert code == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and "nope.ckpt" in errors[0] and errors[0].count(". ") <= 1
    assert not (tmp_path / "out").exists()
