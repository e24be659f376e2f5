"""Sampler speed paths compute what the plain paths compute.

- A batch of different prompts, hints and seeds (what `caphuman eval --batch-size` sends) equals
  one call per image, to float tolerance, with a CapFace whose hint really changes the image.
- The float16 VAE decode that overflows is redone in float32 and equals a float32 decode.
- channels_last memory gives the same images.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from caphuman.acceleration import apply_speed_options
from caphuman.conditions.identity import IdentityInputs

SIZE = 64
PROMPTS = ["a photo of a person on the beach", "an oil painting of a person", "a person on the moon"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomize_zero_convolutions(capface, seed: int = 1) -> None:
    """Random weights for CapFace's zero convolutions, so hint and identity change the UNet."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in [*capface.controlnet_down_blocks, capface.controlnet_mid_block, capface.controlnet_cond_embedding.conv_out]:
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.3)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.3)


def identity_inputs() -> IdentityInputs:
    generator = torch.Generator().manual_seed(0)
    return IdentityInputs(torch.randn(1, 1, 512, generator=generator), torch.randn(1, 1, 3, 32, 32, generator=generator))


def sample(pipe, prompts, hints: torch.Tensor, seeds: list[int]) -> np.ndarray:
    return pipe(
        prompts,
        hints,
        identity=identity_inputs(),
        num_inference_steps=3,
        mask_gating=False,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        output_type="np",
    ).images


def test_batch_of_prompts_hints_and_seeds_equals_one_call_per_image(tiny_pipeline):
    randomize_zero_convolutions(tiny_pipeline.capface)
    hints = torch.rand(3, 9, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    seeds = [7, 3, 7]
    batched = sample(tiny_pipeline, PROMPTS, hints, seeds)
    singles = np.concatenate([sample(tiny_pipeline, [p], hints[i : i + 1], [seeds[i]]) for i, p in enumerate(PROMPTS)])
    torch.testing.assert_close(torch.from_numpy(batched), torch.from_numpy(singles), atol=1e-5, rtol=0)
    # Images 0 and 2 share a seed: only their prompt and hint differ, and the images do, so a
    # batch that mixed up prompts or hints would fail the comparison above.
    assert np.abs(singles[0] - singles[2]).max() > 1e-3
    swapped = sample(tiny_pipeline, [PROMPTS[0]], hints[2:3], [seeds[0]])
    assert np.abs(swapped[0] - singles[0]).max() > 1e-4


def own_copies(pipe, *names: str) -> None:
    """Give ``pipe`` its own copies of the session-wide tiny backbone's modules before changing them."""
    pipe.register_modules(**{name: copy.deepcopy(getattr(pipe, name)) for name in names})


def test_float16_decode_that_overflows_is_redone_in_float32(tiny_pipeline):
    own_copies(tiny_pipeline, "vae")
    tiny_pipeline.vae.to(torch.float16)
    # The retry upcasts the float16 weights: the reference is float32 with those same weights.
    reference_vae = copy.deepcopy(tiny_pipeline.vae).to(torch.float32)
    # Latents this large overflow float16 inside the decoder (65504 is its largest value).
    latents = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0)) * 3e4
    scaled = latents / tiny_pipeline.vae.config.scaling_factor
    with torch.no_grad():
        plain = tiny_pipeline.vae.decode(scaled.half(), return_dict=False)[0]
        expected = reference_vae.decode(scaled, return_dict=False)[0]
        decoded = tiny_pipeline.decode_latents(latents)
    assert not torch.isfinite(plain).all(), "precondition: the float16 decode overflows"
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(decoded, expected)
    assert tiny_pipeline.vae.dtype == torch.float16  # upcast for that call only


def test_float16_decode_that_fits_stays_in_float16(tiny_pipeline):
    own_copies(tiny_pipeline, "vae")
    tiny_pipeline.vae.to(torch.float16)
    latents = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        decoded = tiny_pipeline.decode_latents(latents)
        plain = tiny_pipeline.vae.decode((latents / tiny_pipeline.vae.config.scaling_factor).half(), return_dict=False)[0]
    assert decoded.dtype == torch.float16
    torch.testing.assert_close(decoded, plain, atol=0, rtol=0)


def test_channels_last_gives_the_same_images(tiny_pipeline):
    own_copies(tiny_pipeline, "unet", "vae")
    randomize_zero_convolutions(tiny_pipeline.capface)
    hints = torch.rand(2, 9, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    before = sample(tiny_pipeline, PROMPTS[:2], hints, [0, 1])
    apply_speed_options(tiny_pipeline, channels_last=True)
    assert tiny_pipeline.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    after = sample(tiny_pipeline, PROMPTS[:2], hints, [0, 1])
    torch.testing.assert_close(torch.from_numpy(after), torch.from_numpy(before), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_sampling_compile_builds_a_compiled_pipeline_with_the_eager_images(tmp_path):
    """sampling.compile: true in the config -> UNet and CapFace compiled in place, same images."""
    from pathlib import Path

    from caphuman.build import build_pipeline
    from caphuman.config import load_config

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    eager = build_pipeline(load_config(tiny), tmp_path, "cpu", with_recognizer=False)
    compiled = build_pipeline(load_config(tiny, {"sampling": {"compile": True}}), tmp_path, "cpu", with_recognizer=False)
    assert compiled.unet._compiled_call_impl is not None and compiled.capface._compiled_call_impl is not None
    assert eager.unet._compiled_call_impl is None
    for pipe in (eager, compiled):
        pipe.set_progress_bar_config(disable=True)
        randomize_zero_convolutions(pipe.capface)
    hints = torch.rand(2, 9, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        torch.from_numpy(sample(compiled, PROMPTS[:2], hints, [0, 1])),
        torch.from_numpy(sample(eager, PROMPTS[:2], hints, [0, 1])),
        atol=1e-4,
        rtol=0,
    )
