"""CapFace against diffusers' ControlNetModel, the identity encoder, and the mask gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel

from caphuman.models.capface import CapFaceModel, CapFaceOutput, resize_face_mask
from caphuman.models.identity_encoder import IdentityEncoder


def test_capface_is_a_controlnet_with_a_nine_channel_stem_plus_mask_head(tiny_backbone):
    capface = CapFaceModel.from_unet(tiny_backbone.unet)
    reference = ControlNetModel.from_unet(tiny_backbone.unet, conditioning_channels=9)
    ours, theirs = capface.state_dict(), reference.state_dict()
    assert set(ours) - set(theirs) == {"face_mask_head.weight", "face_mask_head.bias"}
    assert set(theirs) <= set(ours)
    assert all(ours[key].shape == theirs[key].shape for key in theirs)
    assert capface.controlnet_cond_embedding.conv_in.in_channels == 9
    assert capface.face_mask_head.in_channels == tiny_backbone.unet.config.block_out_channels[0]
    # copied from the UNet, zero convolutions at zero
    torch.testing.assert_close(capface.down_blocks.state_dict(), tiny_backbone.unet.down_blocks.state_dict())
    assert all(block.weight.abs().sum() == 0 for block in capface.controlnet_down_blocks)


def test_capface_residuals_equal_controlnet_forward_with_identity_tokens(tiny_backbone):
    torch.manual_seed(0)
    reference = ControlNetModel.from_unet(tiny_backbone.unet, conditioning_channels=9)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    capface = CapFaceModel.from_unet(tiny_backbone.unet)
    missing, unexpected = capface.load_state_dict(reference.state_dict(), strict=False)
    assert set(missing) == {"face_mask_head.weight", "face_mask_head.bias"} and not unexpected

    latents, tokens, hint = torch.randn(2, 4, 8, 8), torch.randn(2, 17, 32), torch.rand(2, 9, 64, 64)
    timestep = torch.tensor([10, 700])
    with torch.no_grad():
        ours = capface(latents, timestep, tokens, hint)
        theirs = reference(latents, timestep, encoder_hidden_states=tokens, controlnet_cond=hint)
    assert len(ours.down_block_res_samples) == len(theirs.down_block_res_samples)
    for mine, expected in zip(ours.down_block_res_samples, theirs.down_block_res_samples, strict=True):
        torch.testing.assert_close(mine, expected)
    torch.testing.assert_close(ours.mid_block_res_sample, theirs.mid_block_res_sample)
    assert ours.face_mask.shape == (2, 1, 8, 8) and 0 <= ours.face_mask.min() and ours.face_mask.max() <= 1


def test_gated_residuals_threshold_mask_at_every_resolution():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 0.9  # left half on
    output = CapFaceOutput(
        down_block_res_samples=(torch.ones(1, 2, 8, 8), torch.ones(1, 2, 4, 4)),
        mid_block_res_sample=torch.ones(1, 2, 2, 2),
        face_mask=mask,
    )
    down, mid = output.gated_residuals(strength=0.5, mask_gating=True)
    assert torch.equal(down[0][0, 0], torch.cat([torch.full((8, 4), 0.5), torch.zeros(8, 4)], dim=1))
    assert torch.equal(down[1][0, 0], torch.cat([torch.full((4, 2), 0.5), torch.zeros(4, 2)], dim=1))
    assert torch.equal(mid[0, 0], torch.tensor([[0.5, 0.0], [0.5, 0.0]]))
    ungated_down, ungated_mid = output.gated_residuals(strength=2.0, mask_gating=False)
    assert torch.equal(ungated_mid, torch.full((1, 2, 2, 2), 2.0))


def half_pixel_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resampling of a square (h, h) array, written from the formula (float64).

    Output cell i samples the input at x = (i + 0.5) * h / size - 0.5 (cell centres line up,
    i.e. align_corners=False), clamped to [0, h - 1], weighting the two neighbouring cells.
    """
    h = image.shape[0]
    x = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0.0, h - 1)
    low = np.floor(x).astype(int)
    high = np.minimum(low + 1, h - 1)
    frac = x - low
    rows = image[low] * (1 - frac)[:, None] + image[high] * frac[:, None]
    return rows[:, low] * (1 - frac)[None, :] + rows[:, high] * frac[None, :]


def test_gate_is_the_published_plain_bilinear_resize_then_threshold():
    """The published cldm.py gates with (F.resize(mask, h.shape[-2:]) > 0.5) under torchvision 0.14.1,
    whose tensor resize does not antialias: a bilinear sample at each cell centre."""
    torch.manual_seed(0)
    # A smooth blob plus noise: many cells sit near the 0.5 threshold at every resolution.
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    blob = torch.sigmoid(6.0 * (0.55 - (xs**2 / 0.5 + ys**2 / 0.8).sqrt()))
    mask = (blob + 0.25 * torch.randn(64, 64)).clamp(0, 1)[None, None].repeat(2, 1, 1, 1)
    mask[1] = mask[1].flip(-1)
    sizes = (64, 32, 16, 8)
    output = CapFaceOutput(
        down_block_res_samples=tuple(torch.ones(2, 3, s, s) for s in sizes),
        mid_block_res_sample=torch.ones(2, 3, 8, 8),
        face_mask=mask,
    )
    down, mid = output.gated_residuals(strength=1.0, mask_gating=True)
    differs_from_antialiased = 0
    for size, residual in zip(sizes, down, strict=True):
        formula = torch.from_numpy(np.stack([half_pixel_bilinear(m[0].double().numpy(), size) for m in mask]))[:, None]
        expected = (formula > 0.5).float()
        torch.testing.assert_close(residual, expected.expand_as(residual), rtol=0, atol=0)
        # The same through PyTorch's and torchvision's own plain bilinear resizes.
        plain = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False)
        assert torch.equal(residual[:, :1], (plain > 0.5).float())
        torchvision_functional = pytest.importorskip("torchvision.transforms.functional")
        assert torch.equal(residual[:, :1], (torchvision_functional.resize(mask, [size, size], antialias=False) > 0.5).float())
        if size < 64:
            antialiased = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False, antialias=True) > 0.5
            differs_from_antialiased += int((antialiased.float() != residual[:, :1]).sum())
    assert torch.equal(mid, down[-1])
    # The test can tell the two formulas apart (the antialiased one is not the published gate).
    assert differs_from_antialiased > 10


def test_mask_resize_follows_torchvision_dtype_rules():
    """Same size: untouched. Integers: float32 bilinear, then round half to even, then cast back."""
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.int64)
    labels[..., 2:6, 3:7] = 1
    labels[..., 6, 3] = 1  # a quarter of a 2x2 block
    labels[..., 0, 2:4] = 1
    labels[..., 1, 2] = 1  # three quarters of a 2x2 block
    assert resize_face_mask(labels, (8, 8)) is labels
    halved = resize_face_mask(labels, (4, 4))
    assert halved.dtype == torch.int64
    # Each output cell is the mean of its 2x2 input cells: 0, 0.25, 0.5, 0.75 or 1; round(0.5) = 0.
    means = labels.double().unflatten(2, (4, 2)).unflatten(4, (4, 2)).mean(dim=(3, 5))
    assert torch.equal(halved, torch.where(means > 0.5, 1, 0))
    assert (means == 0.5).any() and (means == 0.75).any()  # both rounding cases occur
    half = torch.rand(1, 1, 16, 16).half()
    resized = resize_face_mask(half, (8, 8))
    assert resized.dtype == torch.float16
    torch.testing.assert_close(resized, F.interpolate(half.float(), size=(8, 8), mode="bilinear", align_corners=False).half(), rtol=0, atol=0)


def test_identity_encoder_token_layout_and_fusion():
    torch.manual_seed(0)
    encoder = IdentityEncoder(face_embedding_dim=128, clip_embedding_dim=16, cross_attention_dim=8)
    face, clip = torch.randn(2, 3, 128), torch.randn(2, 3, 5, 16)
    mean_tokens = encoder(face, clip, fusion="mean")
    concat_tokens = encoder(face, clip, fusion="concat")
    assert mean_tokens.shape == (2, 6, 8) and concat_tokens.shape == (2, 16, 8)
    # local tokens first, the global token last, as in the published model
    expected_global = encoder.global_projection(face).mean(dim=1)
    torch.testing.assert_close(mean_tokens[:, -1], expected_global)
    torch.testing.assert_close(mean_tokens[:, :5], encoder.local_projection(clip).mean(dim=1))
    torch.testing.assert_close(concat_tokens[:, 5:10], encoder.local_projection(clip[:, 1]))
