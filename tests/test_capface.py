"""CapFace against diffusers' ControlNetModel, the identity encoder, and the mask gate."""

from __future__ import annotations

import torch
from diffusers import ControlNetModel

from caphuman.models.capface import CapFaceModel, CapFaceOutput
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
    for mine, expected in zip(ours.down_block_res_samples, theirs.down_block_res_samples):
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
