"""SD loaders with locally built files in the real formats: original-layout single files
(.safetensors and .ckpt), a diffusers folder, a CLIP vision folder, a separate VAE file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from caphuman.config import load_config
from caphuman.errors import CapHumanError
from caphuman.weights.ldm_layout import export_original_sd, ldm_vae_state_dict
from caphuman.weights.stable_diffusion import SDArchitecture, load_sd15_backbone, load_single_file, load_vae


def _assert_same_weights(loaded: torch.nn.Module, reference: torch.nn.Module) -> None:
    expected = reference.state_dict()
    actual = loaded.state_dict()
    assert set(actual) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def architecture(tiny_backbone) -> SDArchitecture:
    return SDArchitecture.from_models(tiny_backbone.unet, tiny_backbone.vae, tiny_backbone.text_encoder)


@pytest.fixture(scope="module")
def original_state(tiny_backbone) -> dict[str, torch.Tensor]:
    return {key: value.contiguous() for key, value in export_original_sd(tiny_backbone.unet, tiny_backbone.vae, tiny_backbone.text_encoder).items()}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory, tiny_backbone) -> Path:
    folder = tmp_path_factory.mktemp("weights") / "clip-vit-large-patch14"
    tiny_backbone.image_encoder.save_pretrained(folder)
    tiny_backbone.tokenizer.save_pretrained(folder)
    tiny_backbone.feature_extractor.save_pretrained(folder)
    return folder


def test_export_uses_the_published_ldm_key_names(original_state):
    # CompVis layout names, written out by hand for the tiny UNet (layers_per_block 1, two
    # levels: input_blocks 0 conv_in, 1 resnet+attention, 2 downsampler, 3 resnet; up level 0
    # has two resnets, its upsampler is output_blocks.1.1 as that level has no attention).
    for key in (
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.1.1.conv.weight",
        "model.diffusion_model.output_blocks.3.1.proj_out.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.down.0.block.0.norm1.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    ):
        assert key in original_state, key
    # ldm keeps the VAE attention projections as 1x1 convolutions.
    assert original_state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_round_trip(tmp_path, tiny_backbone, architecture, original_state, suffix):
    path = tmp_path / f"tiny_sd{suffix}"
    if suffix == ".safetensors":
        save_file(original_state, str(path))
    else:  # Lightning-style: the weights under "state_dict", plus a non-tensor entry
        torch.save({"state_dict": original_state, "global_step": 7}, path)
    unet, vae, text_encoder = load_single_file(path, architecture)
    _assert_same_weights(unet, tiny_backbone.unet)
    _assert_same_weights(vae, tiny_backbone.vae)
    _assert_same_weights(text_encoder, tiny_backbone.text_encoder)


def test_backbone_from_single_file_and_separate_vae(tmp_path, tiny_backbone, architecture, original_state, clip_folder):
    weights = clip_folder.parent
    save_file(original_state, str(weights / "tiny_sd.safetensors"))
    # A separate VAE in the stand-alone layout (encoder.*, decoder.*), different weights.
    other_vae = type(tiny_backbone.vae).from_config(tiny_backbone.vae.config)
    torch.manual_seed(5)
    for parameter in other_vae.parameters():
        parameter.data.normal_()
    save_file({key: value.contiguous() for key, value in ldm_vae_state_dict(other_vae).items()}, str(weights / "vae.safetensors"))
    config = load_config(overrides={"model": {"stable_diffusion": "tiny_sd.safetensors", "vae": "vae.safetensors", "clip_vision": clip_folder.name}})
    backbone = load_sd15_backbone(config.model, weights, architecture)
    _assert_same_weights(backbone.unet, tiny_backbone.unet)
    _assert_same_weights(backbone.vae, other_vae)
    _assert_same_weights(backbone.image_encoder, tiny_backbone.image_encoder)
    assert backbone.tokenizer("a photo").input_ids == tiny_backbone.tokenizer("a photo").input_ids
    assert not any(p.requires_grad for p in backbone.unet.parameters())


def test_diffusers_folder_loads(tmp_path, tiny_backbone, clip_folder):
    from diffusers import StableDiffusionPipeline

    folder = tmp_path / "sd"
    pipe = StableDiffusionPipeline(
        vae=tiny_backbone.vae, text_encoder=tiny_backbone.text_encoder, tokenizer=tiny_backbone.tokenizer,
        unet=tiny_backbone.unet, scheduler=__import__("diffusers").DDIMScheduler(**tiny_backbone.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    config = load_config(overrides={"model": {"stable_diffusion": str(folder), "vae": None, "clip_vision": str(clip_folder)}})
    backbone = load_sd15_backbone(config.model, tmp_path)
    _assert_same_weights(backbone.unet, tiny_backbone.unet)
    _assert_same_weights(backbone.text_encoder, tiny_backbone.text_encoder)
    assert backbone.scheduler_config["beta_end"] == pytest.approx(tiny_backbone.scheduler_config["beta_end"])


def test_truncated_file_names_the_file(tmp_path, architecture, original_state):
    path = tmp_path / "truncated.safetensors"
    save_file(original_state, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CapHumanError, match="truncated.safetensors"):
        load_single_file(path, architecture)
    ckpt = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": original_state}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(CapHumanError, match="truncated.ckpt"):
        load_single_file(ckpt, architecture)


def test_wrong_keys_and_wrong_architecture_name_the_file(tmp_path, architecture, original_state):
    renamed = dict(original_state)
    renamed["model.diffusion_model.out.2.weightX"] = renamed.pop("model.diffusion_model.out.2.weight")
    path = tmp_path / "renamed.safetensors"
    save_file(renamed, str(path))
    with pytest.raises(CapHumanError, match=r"renamed\.safetensors.*conv_out\.weight"):
        load_single_file(path, architecture)
    # The tiny file against the default (SD 1.5) architecture: a shape error, not a crash.
    good = tmp_path / "tiny.safetensors"
    save_file(original_state, str(good))
    with pytest.raises(CapHumanError, match=r"tiny\.safetensors.*shape"):
        load_single_file(good)


def test_pickle_refused_by_weights_only_says_how_to_convert(tmp_path, architecture):
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callback": Path("not/a/tensor")}, path)
    with pytest.raises(CapHumanError, match="safetensors"):
        load_single_file(path, architecture)


def test_missing_vae_and_clip_are_named(tmp_path):
    with pytest.raises(CapHumanError, match="nothere.safetensors"):
        load_vae(tmp_path / "nothere.safetensors")
