"""The second (OpenPose) ControlNet in the pipeline: parity with diffusers' ControlNet pipeline and
MultiControlNet composition, strength 0 is today's output, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from PIL import Image

from caphuman.conditions.text import encode_prompts
from caphuman.schedulers import make_scheduler
from tests.test_pipeline import PROMPT, SIZE, hint, identity_inputs, randomize_capface, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_openpose_controlnet(unet, seed: int = 7) -> ControlNetModel:
    """A ControlNet of the SD 1.5 layout (3-channel map, text cross-attention) built from the tiny
    UNet, with random zero convolutions so that it really changes the UNet."""
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out]:
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.3)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.3)
    return controlnet.eval()


def pose_map(seed: int = 0) -> np.ndarray:
    """A sparse coloured map like an OpenPose drawing: a few bright blobs on black."""
    rng = np.random.default_rng(seed)
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    for _ in range(6):
        y, x = rng.integers(4, SIZE - 4, size=2)
        image[y - 3 : y + 3, x - 3 : x + 3] = rng.integers(0, 256, size=3)
    return image


@pytest.fixture()
def body_pipeline(tiny_pipeline):
    tiny_pipeline.register_modules(body_controlnet=random_openpose_controlnet(tiny_pipeline.unet))
    return tiny_pipeline


def test_capface_off_equals_diffusers_controlnet_pipeline(body_pipeline):
    """With CapFace at strength 0 the pipeline is SD + one ControlNet: diffusers' own
    StableDiffusionControlNetPipeline on the same parts must give the same images."""
    reference = StableDiffusionControlNetPipeline(
        vae=body_pipeline.vae,
        text_encoder=body_pipeline.text_encoder,
        tokenizer=body_pipeline.tokenizer,
        unet=body_pipeline.unet,
        controlnet=body_pipeline.body_controlnet,
        scheduler=make_scheduler("ddim"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    image = pose_map()
    expected = reference(
        PROMPT,
        Image.fromarray(image),
        height=SIZE,
        width=SIZE,
        num_inference_steps=3,
        guidance_scale=7.0,
        negative_prompt="blurry",
        controlnet_conditioning_scale=0.7,
        generator=torch.Generator().manual_seed(4),
        output_type="np",
    ).images
    ours = run(body_pipeline, seed=4, steps=3, capface_strength=0.0, negative_prompt="blurry", body_map=image, body_control_strength=0.7)
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(expected))
    without = run(body_pipeline, seed=4, steps=3, capface_strength=0.0, negative_prompt="blurry")
    assert np.abs(ours - without).max() > 1e-3  # the ControlNet really acts


def test_noise_is_unet_with_summed_capface_and_controlnet_residuals(body_pipeline):
    """predict_noise == UNet(text) with CapFace's gated residuals + the OpenPose ControlNet's
    residuals (computed by diffusers' MultiControlNetModel on each branch's text), then CFG."""
    pipe = body_pipeline
    randomize_capface(pipe.capface)
    with torch.no_grad():  # a random mask head, so the gate keeps some positions and drops others
        head = pipe.capface.face_mask_head
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(3)))
        head.bias.zero_()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=generator)
    timestep = torch.tensor(601)
    pipe.scheduler.set_timesteps(20)
    text = encode_prompts([PROMPT], pipe.tokenizer, pipe.text_encoder)
    negative = encode_prompts(["blurry"], pipe.tokenizer, pipe.text_encoder)
    tokens = pipe.encode_identity(None, identity_inputs(), 1, "mean")
    condition = hint()
    body = torch.from_numpy(pose_map()).permute(2, 0, 1)[None].float() / 255.0
    strength, guidance = 0.8, 7.0
    with torch.no_grad():  # centre the mask head's logits so about half the positions pass the gate
        mask = pipe.capface(latents, timestep, tokens, condition).face_mask
        head.bias.fill_(-float(torch.logit(mask).median()))

    ours, _ = pipe.predict_noise(
        latents,
        timestep,
        text,
        negative,
        tokens,
        condition,
        guidance,
        None,
        1.0,
        True,
        body_map=body,
        body_control_strength=strength,
    )

    with torch.no_grad():
        capface = pipe.capface(latents, timestep, tokens, condition)
        capface_down, capface_mid = capface.gated_residuals(1.0, True)
        multi = MultiControlNetModel([pipe.body_controlnet])
        branches = []
        for branch_text in (negative, text):
            body_down, body_mid = multi(
                latents,
                timestep,
                encoder_hidden_states=branch_text,
                controlnet_cond=[body],
                conditioning_scale=[strength],
                return_dict=False,
            )
            branches.append(
                pipe.unet(
                    latents,
                    timestep,
                    encoder_hidden_states=branch_text,
                    down_block_additional_residuals=[a + b for a, b in zip(capface_down, body_down, strict=True)],
                    mid_block_additional_residual=capface_mid + body_mid,
                    return_dict=False,
                )[0]
            )
    uncond, cond = branches
    torch.testing.assert_close(ours, uncond + guidance * (cond - uncond))
    # The gate really acted on CapFace (so the test tells gated from ungated CapFace residuals) ...
    assert 0.0 < float((capface.face_mask > 0.5).float().mean()) < 1.0
    # ... and the ControlNet's residuals are not gated: gating them too gives another noise.
    gate = (capface.face_mask > 0.5).to(latents.dtype)
    assert not torch.allclose(body_mid * torch.nn.functional.interpolate(gate, size=body_mid.shape[-2:]), body_mid)


def test_strength_zero_is_todays_output(tiny_pipeline):
    randomize_capface(tiny_pipeline.capface)
    today = run(tiny_pipeline, seed=6)
    tiny_pipeline.register_modules(body_controlnet=random_openpose_controlnet(tiny_pipeline.unet))
    with_map_off = run(tiny_pipeline, seed=6, body_map=pose_map(), body_control_strength=0.0)
    np.testing.assert_array_equal(with_map_off, today)
    on = run(tiny_pipeline, seed=6, body_map=pose_map(), body_control_strength=1.0)
    assert np.abs(on - today).max() > 1e-3


def test_map_forms_agree_and_bad_inputs_are_refused(body_pipeline):
    image = pose_map()
    as_tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    from_array = run(body_pipeline, seed=1, body_map=image, body_control_strength=0.5)
    np.testing.assert_array_equal(run(body_pipeline, seed=1, body_map=Image.fromarray(image), body_control_strength=0.5), from_array)
    np.testing.assert_array_equal(run(body_pipeline, seed=1, body_map=as_tensor, body_control_strength=0.5), from_array)
    with pytest.raises(ValueError, match="body_map is 32x32"):
        run(body_pipeline, body_map=image[:32, :32], body_control_strength=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        run(body_pipeline, body_map=image, body_control_strength=-1.0)
    body_pipeline.register_modules(body_controlnet=None)
    with pytest.raises(ValueError, match="needs a pipeline with a body_controlnet"):
        run(body_pipeline, body_map=image, body_control_strength=0.5)
