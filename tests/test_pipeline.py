"""CapHuman pipeline on the tiny model: parity with diffusers, determinism, round trips, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caphuman.conditions.identity import IdentityInputs, ReferenceFace
from caphuman.models.adapter import CapHumanAdapter

SIZE = 64
PROMPT = "a photo of a person on the beach"


def identity_inputs(seed: int = 0, references: int = 1) -> IdentityInputs:
    generator = torch.Generator().manual_seed(seed)
    return IdentityInputs(
        face_embeds=torch.randn(1, references, 512, generator=generator),
        clip_pixel_values=torch.randn(1, references, 3, 32, 32, generator=generator),
    )


def hint(seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 9, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def randomize_capface(capface, seed: int = 1, mask_bias: float | None = None) -> None:
    """Give every zero convolution random weights, so the branch really changes the UNet."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in [*capface.controlnet_down_blocks, capface.controlnet_mid_block, capface.controlnet_cond_embedding.conv_out]:
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.3)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.3)
        if mask_bias is not None:
            capface.face_mask_head.weight.zero_()
            capface.face_mask_head.bias.fill_(mask_bias)


def run(pipe, seed: int = 0, steps: int = 2, **kwargs) -> np.ndarray:
    kwargs.setdefault("identity", identity_inputs())
    return pipe(
        kwargs.pop("prompt", PROMPT),
        kwargs.pop("hint", hint()),
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kwargs,
    ).images


@pytest.fixture()
def reference_sd(stable_diffusion):
    """diffusers' own StableDiffusionPipeline (tests/conftest.py), called as :func:`run` calls ours."""
    pipe = stable_diffusion

    def generate(seed: int = 0, steps: int = 2, guidance_scale: float = 7.0, negative_prompt: str | None = None, num_images: int = 1):
        return pipe(
            PROMPT,
            height=SIZE,
            width=SIZE,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            num_images_per_prompt=num_images,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images

    return generate


def test_fresh_capface_equals_stable_diffusion(tiny_pipeline, reference_sd):
    ours = run(tiny_pipeline, seed=3, steps=3)
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(reference_sd(seed=3, steps=3)))


def test_fresh_capface_equals_stable_diffusion_batched_with_negative_prompt(tiny_pipeline, reference_sd):
    ours = run(tiny_pipeline, seed=5, negative_prompt="blurry", num_images_per_prompt=2)
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(reference_sd(seed=5, negative_prompt="blurry", num_images=2)))


def test_strength_zero_equals_stable_diffusion_even_with_trained_capface(tiny_pipeline, reference_sd):
    randomize_capface(tiny_pipeline.capface)
    active = run(tiny_pipeline, seed=1)
    off = run(tiny_pipeline, seed=1, capface_strength=0.0)
    expected = reference_sd(seed=1)
    torch.testing.assert_close(torch.from_numpy(off), torch.from_numpy(expected))
    # The randomised branch really acts when on, so the equality above is not vacuous.
    assert np.abs(active - expected).max() > 1e-3


def test_all_zero_mask_gates_every_residual(tiny_pipeline, reference_sd):
    randomize_capface(tiny_pipeline.capface, mask_bias=-20.0)  # sigmoid(-20) ~ 0: mask off everywhere
    gated = run(tiny_pipeline, seed=2)
    ungated = run(tiny_pipeline, seed=2, mask_gating=False)
    expected = reference_sd(seed=2)
    torch.testing.assert_close(torch.from_numpy(gated), torch.from_numpy(expected))
    assert np.abs(ungated - expected).max() > 1e-3


def test_mask_gate_keeps_residuals_where_mask_is_on(tiny_pipeline):
    randomize_capface(tiny_pipeline.capface, mask_bias=20.0)  # mask on everywhere: gating is a no-op
    torch.testing.assert_close(torch.from_numpy(run(tiny_pipeline, seed=4)), torch.from_numpy(run(tiny_pipeline, seed=4, mask_gating=False)))


def test_identity_and_hint_change_the_output_of_a_trained_branch(tiny_pipeline):
    randomize_capface(tiny_pipeline.capface)
    base = run(tiny_pipeline, seed=0)
    assert np.abs(base - run(tiny_pipeline, seed=0, hint=hint(seed=9))).max() > 1e-4
    assert np.abs(base - run(tiny_pipeline, seed=0, identity=identity_inputs(seed=9))).max() > 1e-4


def test_tau_above_every_timestep_keeps_identity(tiny_pipeline):
    randomize_capface(tiny_pipeline.capface)
    # DDIM with 2 steps visits t = 501 and 1: tau = 1000 never zeroes the tokens; tau = 1 zeroes
    # them at t = 501, which must change the image.
    torch.testing.assert_close(torch.from_numpy(run(tiny_pipeline, tau=1000)), torch.from_numpy(run(tiny_pipeline)))
    assert np.abs(run(tiny_pipeline, tau=1) - run(tiny_pipeline)).max() > 1e-5


def test_guidance_runs_for_every_scale_but_one(tiny_pipeline):
    """Published DDIM: eps = eps_neg + s (eps_pos - eps_neg) unless s == 1. At s = 0 that is the
    negative branch alone: the negative prompt with the same identity tokens and hint, unguided."""
    randomize_capface(tiny_pipeline.capface)
    scale_zero = run(tiny_pipeline, guidance_scale=0.0, negative_prompt="blurry")
    negative_alone = run(tiny_pipeline, prompt="blurry", guidance_scale=1.0)
    torch.testing.assert_close(torch.from_numpy(scale_zero), torch.from_numpy(negative_alone), atol=1e-5, rtol=1e-5)
    positive_alone = run(tiny_pipeline, guidance_scale=1.0, negative_prompt="blurry")
    assert np.abs(scale_zero - positive_alone).max() > 1e-3  # the prompts really differ
    # Between 0 and 1 the prediction interpolates: neither branch alone.
    half = run(tiny_pipeline, guidance_scale=0.5, negative_prompt="blurry")
    assert np.abs(half - positive_alone).max() > 1e-4 and np.abs(half - negative_alone).max() > 1e-4


def test_identity_guidance_of_one_equals_published_guidance(tiny_pipeline):
    randomize_capface(tiny_pipeline.capface)
    torch.testing.assert_close(
        torch.from_numpy(run(tiny_pipeline, identity_guidance_scale=1.0)), torch.from_numpy(run(tiny_pipeline)), atol=1e-5, rtol=1e-5
    )
    assert np.abs(run(tiny_pipeline, identity_guidance_scale=3.0) - run(tiny_pipeline)).max() > 1e-4


def test_seeds_reproduce_and_differ(tiny_pipeline):
    first, again, other = run(tiny_pipeline, seed=7), run(tiny_pipeline, seed=7), run(tiny_pipeline, seed=8)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_batch_shapes(tiny_pipeline):
    images = run(tiny_pipeline, prompt=[PROMPT, "a portrait in the snow"], num_images_per_prompt=3, hint=hint(batch=2))
    assert images.shape == (6, SIZE, SIZE, 3)
    assert images.min() >= 0 and images.max() <= 1
    output = tiny_pipeline(PROMPT, hint(), identity=identity_inputs(), num_inference_steps=1, num_images_per_prompt=2)
    assert len(output.images) == 2 and output.images[0].size == (SIZE, SIZE)
    assert output.face_masks.shape == (2, 1, SIZE // 8, SIZE // 8)


def test_reference_faces_path_equals_precomputed_inputs(tiny_pipeline):
    rng = np.random.default_rng(0)
    faces = [ReferenceFace(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(2)]
    randomize_capface(tiny_pipeline.capface)
    from caphuman.conditions.identity import prepare_identity_inputs

    precomputed = prepare_identity_inputs(faces, tiny_pipeline.face_recognizer, tiny_pipeline.feature_extractor)
    assert precomputed.face_embeds.shape == (1, 2, 512)
    np.testing.assert_array_equal(run(tiny_pipeline, identity=None, references=faces), run(tiny_pipeline, identity=precomputed))


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "euler_a", "unipc"])
def test_schedulers_by_name_reproduce(tiny_pipeline, name):
    tiny_pipeline.set_scheduler(name)
    assert (
        type(tiny_pipeline.scheduler).__name__
        == {
            "ddim": "DDIMScheduler",
            "dpmpp_2m": "DPMSolverMultistepScheduler",
            "euler_a": "EulerAncestralDiscreteScheduler",
            "unipc": "UniPCMultistepScheduler",
        }[name]
    )
    first, again = run(tiny_pipeline, seed=11, steps=3), run(tiny_pipeline, seed=11, steps=3)
    np.testing.assert_array_equal(first, again)
    assert np.isfinite(first).all()


def test_save_load_round_trip_gives_identical_images(tiny_pipeline, tmp_path):
    randomize_capface(tiny_pipeline.capface)
    before = run(tiny_pipeline, seed=6)
    CapHumanAdapter(tiny_pipeline.capface, tiny_pipeline.identity_encoder).save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "capface" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = CapHumanAdapter.from_pretrained(tmp_path / "adapter")
    with torch.no_grad():  # overwrite the live modules with noise first, so a no-op load would fail
        for parameter in [*tiny_pipeline.capface.parameters(), *tiny_pipeline.identity_encoder.parameters()]:
            parameter.normal_()
    tiny_pipeline.capface.load_state_dict(loaded.capface.state_dict())
    tiny_pipeline.identity_encoder.load_state_dict(loaded.identity_encoder.state_dict())
    np.testing.assert_array_equal(run(tiny_pipeline, seed=6), before)


@pytest.mark.parametrize(
    "bad_hint, message",
    [
        (torch.rand(1, 3, SIZE, SIZE), "9 channels"),
        (torch.rand(1, 9, SIZE, SIZE // 2), "render the hint at the image size"),
        (torch.rand(3, 9, SIZE, SIZE), "hint has batch 3"),
        ("not a tensor", "torch.Tensor"),
    ],
)
def test_bad_hint_is_a_value_error_naming_the_problem(tiny_pipeline, bad_hint, message):
    with pytest.raises(ValueError, match=message):
        run(tiny_pipeline, hint=bad_hint, height=SIZE, width=SIZE)


def test_other_bad_inputs(tiny_pipeline):
    with pytest.raises(ValueError, match="exactly one of"):
        run(tiny_pipeline, identity=None)
    with pytest.raises(ValueError, match="face embeddings are 128-d"):
        run(tiny_pipeline, identity=IdentityInputs(torch.randn(1, 1, 128), torch.randn(1, 1, 3, 32, 32)))
    with pytest.raises(ValueError, match="capface_strength"):
        run(tiny_pipeline, capface_strength=-1.0)
    with pytest.raises(ValueError, match="Unknown scheduler 'nope'"):
        tiny_pipeline.set_scheduler("nope")


def _half_precision_parity(tiny_pipeline, reference_sd, device: str, dtype: torch.dtype) -> None:
    """Run both pipelines (which share the fixture's own modules) in ``dtype`` on ``device``."""
    tiny_pipeline.to(device, dtype)
    reference_images = reference_sd(seed=4)
    ours = run(tiny_pipeline, seed=4)
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(reference_images))
    assert np.isfinite(ours).all()


def test_bfloat16_on_cpu_matches_diffusers_in_the_same_dtype(tiny_pipeline, reference_sd):
    _half_precision_parity(tiny_pipeline, reference_sd, "cpu", torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_float16_on_cuda_matches_diffusers_in_the_same_dtype(tiny_pipeline, reference_sd):
    _half_precision_parity(tiny_pipeline, reference_sd, "cuda", torch.float16)
