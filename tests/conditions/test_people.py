"""Several people in one image: one CapFace pass per person, own mask gate, residuals summed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from caphuman.conditions.people import PersonCondition, arrange_in_row
from caphuman.head.params import HeadParams
from tests.test_pipeline import PROMPT, hint, identity_inputs, randomize_capface, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_one_person_list_equals_the_single_person_call(tiny_pipeline):
    randomize_capface(tiny_pipeline.capface, mask_bias=0.0)  # mask 0.5 + hint-dependent part: some gates on, some off
    single = run(tiny_pipeline, seed=2, identity=identity_inputs(3), hint=hint(4))
    listed = tiny_pipeline(
        PROMPT,
        people=[PersonCondition(hint=hint(4), identity=identity_inputs(3))],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(2),
        output_type="np",
    ).images
    np.testing.assert_array_equal(listed, single)


def test_two_identical_people_equal_one_person_at_double_strength(tiny_pipeline):
    """Gated residuals r*g summed twice are exactly 2*r*g: the whole sampler must agree."""
    randomize_capface(tiny_pipeline.capface)
    person = PersonCondition(hint=hint(5), identity=identity_inputs(6))
    common = dict(num_inference_steps=2, output_type="np")
    two = tiny_pipeline(PROMPT, people=[person, person], capface_strength=0.5, generator=torch.Generator().manual_seed(1), **common).images
    one = tiny_pipeline(
        PROMPT, hint(5), identity=identity_inputs(6), capface_strength=1.0, generator=torch.Generator().manual_seed(1), **common
    ).images
    np.testing.assert_array_equal(two, one)
    other = tiny_pipeline(
        PROMPT, hint(5), identity=identity_inputs(6), capface_strength=0.5, generator=torch.Generator().manual_seed(1), **common
    ).images
    assert np.abs(two - other).max() > 1e-3  # the second pass really adds something


@pytest.fixture()
def mask_from_hint(tiny_pipeline, monkeypatch):
    """CapFace whose face mask is the hint's first channel (average-pooled to latent size), so each
    person's gate is set by their own hint: 1 = gate open everywhere, 0 = closed."""
    capface = tiny_pipeline.capface
    original = capface.forward

    def forward(sample, timestep, identity_tokens, hint, **kwargs):
        output = original(sample, timestep, identity_tokens, hint, **kwargs)
        mask = torch.nn.functional.adaptive_avg_pool2d(hint[:, :1], output.face_mask.shape[-2:])
        return dataclasses.replace(output, face_mask=mask)

    monkeypatch.setattr(capface, "forward", forward)
    randomize_capface(capface)
    return tiny_pipeline


def person_hint(gate_open: bool, seed: int) -> torch.Tensor:
    value = hint(seed)
    value[:, 0] = 1.0 if gate_open else 0.0
    return value


def raw_residuals(pipe, latents, timestep, tokens, person):
    output = pipe.capface.forward(latents, timestep, tokens, person)
    return [*output.down_block_res_samples, output.mid_block_res_sample]


@pytest.mark.parametrize("open_a, open_b", [(True, True), (True, False), (False, True), (False, False)])
def test_each_person_is_gated_by_their_own_mask_and_summed(mask_from_hint, open_a, open_b):
    pipe = mask_from_hint
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    timestep = torch.tensor(500)
    tokens = [torch.randn(1, 5, 32, generator=generator) for _ in range(2)]
    hints = [person_hint(open_a, 1), person_hint(open_b, 2)]
    with torch.no_grad():
        down, mid, mask = pipe.capface_residuals(latents, timestep, tokens, hints, 0.75, True)
        expected = [torch.zeros_like(r) for r in raw_residuals(pipe, latents, timestep, tokens[0], hints[0])]
        for is_open, person_tokens, person in zip((open_a, open_b), tokens, hints, strict=True):
            if is_open:
                expected = [e + r * 0.75 for e, r in zip(expected, raw_residuals(pipe, latents, timestep, person_tokens, person), strict=True)]
    for got, want in zip([*down, mid], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert float(mask.min()) == float(open_a or open_b)  # the union of the two masks


def test_people_and_single_person_arguments_are_exclusive(tiny_pipeline):
    person = PersonCondition(hint=hint(), identity=identity_inputs())
    with pytest.raises(ValueError, match="either `people`"):
        tiny_pipeline(PROMPT, hint(), people=[person], num_inference_steps=1)
    with pytest.raises(ValueError, match="non-empty list"):
        tiny_pipeline(PROMPT, people=[], num_inference_steps=1)
    with pytest.raises(ValueError, match="channels"):
        tiny_pipeline(PROMPT, people=[person, PersonCondition(hint=torch.zeros(1, 3, 64, 64), identity=identity_inputs())], num_inference_steps=1)


def head_params() -> HeadParams:
    zeros = torch.zeros(1, 3)
    return HeadParams(
        shape=zeros,
        expression=zeros,
        jaw=zeros,
        rotation=torch.tensor([[10.0, -5.0, 2.0]]),
        camera=torch.tensor([[0.8, 0.05, 0.1]]),
        albedo=zeros,
        lighting=torch.zeros(1, 9, 3),
        backend="builtin",
    )


def test_arrange_in_row_puts_heads_in_equal_strips_left_to_right():
    heads = [head_params() for _ in range(3)]
    placed = arrange_in_row(heads)
    centres = [float(head.camera[0, 1]) for head in placed]
    assert centres == pytest.approx([-2 / 3, 0.0, 2 / 3])
    assert all(float(head.camera[0, 0]) < float(heads[0].camera[0, 0]) / 3 for head in placed)
    torch.testing.assert_close(placed[1].rotation, heads[1].rotation)  # pose untouched
    assert float(arrange_in_row(heads[:1])[0].camera[0, 1]) == float(heads[0].camera[0, 1])
