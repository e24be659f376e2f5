"""diffusers' pipeline conventions on the tiny CapHuman pipeline: precomputed prompt and identity
embeddings, callback_on_step_end, return_dict, optional components, and the one SamplingConfig ->
pipeline keyword-argument mapping. Where diffusers' own StableDiffusionPipeline defines the
behaviour, the test compares against it (CapFace at strength 0 is plain SD)."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

from caphuman.conditions.identity import ReferenceFace
from caphuman.conditions.people import PersonCondition
from caphuman.config import SamplingConfig
from caphuman.pipeline import CapHumanPipeline
from tests.test_pipeline import PROMPT, SIZE, hint, identity_inputs, randomize_capface

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def generate(pipe, seed: int = 0, steps: int = 2, **kwargs):
    """The pipeline's output (images as float32 numpy, face masks) for one seed."""
    if "prompt_embeds" not in kwargs:
        kwargs.setdefault("prompt", PROMPT)
    if not {"references", "identity", "identity_embeds", "people"} & set(kwargs):
        kwargs["identity"] = identity_inputs()
    if "people" not in kwargs:
        kwargs.setdefault("hint", hint())
    return pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs)


def reference_faces(count: int = 2) -> list[ReferenceFace]:
    rng = np.random.default_rng(0)
    return [ReferenceFace(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(count)]


# ------------------------------------------------------------------ component names


def test_components_are_named_as_in_diffusers(tiny_pipeline, stable_diffusion):
    from diffusers.image_processor import VaeImageProcessor
    from transformers import CLIPImageProcessor

    assert isinstance(tiny_pipeline.feature_extractor, CLIPImageProcessor)
    assert isinstance(tiny_pipeline.image_processor, VaeImageProcessor)
    assert type(tiny_pipeline.image_processor) is type(stable_diffusion.image_processor)
    assert "feature_extractor" in tiny_pipeline.components and "image_processor" not in tiny_pipeline.components


# ------------------------------------------------------------------ prompt embeddings


def test_encode_prompt_equals_stable_diffusion_encode_prompt(tiny_pipeline, stable_diffusion):
    ours = tiny_pipeline.encode_prompt([PROMPT, "snow"], 2, True, ["blurry", "dark"])
    theirs = stable_diffusion.encode_prompt([PROMPT, "snow"], "cpu", 2, True, ["blurry", "dark"])
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=0, atol=0)
    assert tiny_pipeline.encode_prompt(PROMPT, 1, do_classifier_free_guidance=False)[1] is None


@pytest.mark.parametrize("images_per_prompt", [1, 2])
def test_precomputed_prompt_embeds_give_identical_images(tiny_pipeline, images_per_prompt):
    randomize_capface(tiny_pipeline.capface)
    from_text = generate(tiny_pipeline, seed=3, negative_prompt="blurry", num_images_per_prompt=images_per_prompt)
    positive, negative = tiny_pipeline.encode_prompt(PROMPT, 1, True, "blurry")
    from_embeds = generate(tiny_pipeline, seed=3, prompt_embeds=positive, negative_prompt_embeds=negative, num_images_per_prompt=images_per_prompt)
    np.testing.assert_array_equal(from_embeds.images, from_text.images)
    torch.testing.assert_close(from_embeds.face_masks, from_text.face_masks, rtol=0, atol=0)
    # Only the positive embeddings given: the negative ones come from negative_prompt, as in diffusers.
    mixed = generate(tiny_pipeline, seed=3, prompt_embeds=positive, negative_prompt="blurry", num_images_per_prompt=images_per_prompt)
    np.testing.assert_array_equal(mixed.images, from_text.images)


def test_prompt_embeds_at_strength_zero_equal_stable_diffusion_with_the_same_embeds(tiny_pipeline, stable_diffusion):
    positive, negative = tiny_pipeline.encode_prompt(PROMPT, 1, True, "blurry")
    positive, negative = positive + 0.5, negative - 0.25  # embeddings no prompt would give
    ours = generate(tiny_pipeline, seed=2, prompt_embeds=positive, negative_prompt_embeds=negative, capface_strength=0.0)
    theirs = stable_diffusion(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        guidance_scale=7.0,
        generator=torch.Generator().manual_seed(2),
        output_type="np",
    ).images
    torch.testing.assert_close(torch.from_numpy(ours.images), torch.from_numpy(theirs))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": PROMPT, "prompt_embeds": torch.zeros(1, 77, 32)}, "either `prompt` or `prompt_embeds`"),
        ({"prompt": None}, "or precomputed `prompt_embeds`"),
        ({"negative_prompt": "x", "negative_prompt_embeds": torch.zeros(1, 77, 32)}, "either `negative_prompt` or `negative_prompt_embeds`"),
        ({"prompt": None, "prompt_embeds": torch.zeros(77, 32)}, r"prompt_embeds must be a \(B, T, D\) tensor"),
        (
            {"prompt": None, "prompt_embeds": torch.zeros(1, 77, 32), "negative_prompt_embeds": torch.zeros(1, 76, 32)},
            "negative_prompt_embeds .* must match",
        ),
        ({"negative_prompt_embeds": torch.zeros(2, 77, 32)}, "negative_prompt_embeds .* must match"),
    ],
)
def test_prompt_and_embeds_are_mutually_exclusive(tiny_pipeline, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_pipeline, steps=1, **kwargs)


# ------------------------------------------------------------------ identity embeddings


def test_precomputed_identity_embeds_give_identical_images(tiny_pipeline):
    randomize_capface(tiny_pipeline.capface)
    faces = reference_faces()
    from_faces = generate(tiny_pipeline, seed=4, references=faces, tau=600, identity_guidance_scale=2.0)
    tokens = tiny_pipeline.encode_identity(references=faces)
    assert tokens.ndim == 3 and tokens.shape[0] == 1
    from_tokens = generate(tiny_pipeline, seed=4, identity_embeds=tokens, tau=600, identity_guidance_scale=2.0)
    np.testing.assert_array_equal(from_tokens.images, from_faces.images)
    torch.testing.assert_close(from_tokens.face_masks, from_faces.face_masks, rtol=0, atol=0)
    # The same for the precomputed IdentityInputs, several prompts and images, and `concat` fusion.
    identity, prompts = identity_inputs(references=2), [PROMPT, "snow"]
    common = dict(prompt=prompts, hint=hint(batch=2), num_images_per_prompt=2, reference_fusion="concat")
    from_inputs = generate(tiny_pipeline, seed=5, identity=identity, **common)
    tokens = tiny_pipeline.encode_identity(identity=identity, batch_size=2, fusion="concat")
    np.testing.assert_array_equal(generate(tiny_pipeline, seed=5, identity_embeds=tokens, **common).images, from_inputs.images)


def test_identity_embeds_per_person(tiny_pipeline):
    randomize_capface(tiny_pipeline.capface)
    first, second = identity_inputs(seed=1), identity_inputs(seed=2)
    people = [PersonCondition(hint=hint(seed=1), identity=first), PersonCondition(hint=hint(seed=2), identity=second)]
    expected = generate(tiny_pipeline, seed=6, people=people).images
    people = [
        PersonCondition(hint=hint(seed=1), identity_embeds=tiny_pipeline.encode_identity(identity=first)),
        PersonCondition(hint=hint(seed=2), identity=second),
    ]
    np.testing.assert_array_equal(generate(tiny_pipeline, seed=6, people=people).images, expected)


def test_bad_identity_embeds(tiny_pipeline):
    tokens = tiny_pipeline.encode_identity(identity=identity_inputs())
    with pytest.raises(ValueError, match="exactly one of"):
        generate(tiny_pipeline, steps=1, identity=identity_inputs(), identity_embeds=tokens)
    with pytest.raises(ValueError, match="identity_embeds are 16-d"):
        generate(tiny_pipeline, steps=1, identity_embeds=tokens[..., :16])
    with pytest.raises(ValueError, match="identity_embeds has batch 3 for 1 prompts"):
        generate(tiny_pipeline, steps=1, identity_embeds=tokens.expand(3, -1, -1))
    with pytest.raises(ValueError, match="not both"):
        generate(tiny_pipeline, steps=1, identity_embeds=tokens, people=[PersonCondition(hint=hint(), identity_embeds=tokens)])


# ------------------------------------------------------------------ callback_on_step_end


def test_callback_sees_every_step_and_the_tensors_it_asks_for(tiny_pipeline):
    seen = []

    def record(pipe, index, timestep, tensors):
        assert pipe is tiny_pipeline
        seen.append((index, int(timestep), sorted(tensors)))
        assert tensors["latents"].shape == (2, 4, SIZE // 8, SIZE // 8)
        assert tensors["prompt_embeds"].shape[0] == tensors["negative_prompt_embeds"].shape[0] == 2

    plain = generate(tiny_pipeline, steps=3, num_images_per_prompt=2)
    watched = generate(
        tiny_pipeline,
        steps=3,
        num_images_per_prompt=2,
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"],
    )
    timesteps = tiny_pipeline.scheduler.timesteps.tolist()
    assert seen == [(index, timesteps[index], ["latents", "negative_prompt_embeds", "prompt_embeds"]) for index in range(3)]
    np.testing.assert_array_equal(watched.images, plain.images)  # a callback that returns nothing changes nothing
    only_latents = []
    generate(tiny_pipeline, steps=2, callback_on_step_end=lambda pipe, i, t, tensors: only_latents.append(sorted(tensors)))
    assert only_latents == [["latents"], ["latents"]]  # diffusers' default: latents only


def test_callback_that_replaces_latents_changes_the_output_as_in_diffusers(tiny_pipeline, stable_diffusion):
    def halve_after_first_step(pipe, index, timestep, tensors):
        return {"latents": tensors["latents"] * 0.5} if index == 0 else tensors

    plain = generate(tiny_pipeline, seed=1, steps=3, capface_strength=0.0).images
    ours = generate(tiny_pipeline, seed=1, steps=3, capface_strength=0.0, callback_on_step_end=halve_after_first_step).images
    assert np.abs(ours - plain).max() > 1e-3
    theirs = stable_diffusion(
        PROMPT,
        height=SIZE,
        width=SIZE,
        num_inference_steps=3,
        guidance_scale=7.0,
        callback_on_step_end=halve_after_first_step,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    ).images
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(theirs))
    # Replacing the embeddings acts on the next step's prediction.
    swapped = generate(
        tiny_pipeline,
        seed=1,
        steps=3,
        capface_strength=0.0,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
        callback_on_step_end=lambda pipe, i, t, tensors: {"prompt_embeds": tensors["prompt_embeds"] * 0.0},
    ).images
    assert np.abs(swapped - plain).max() > 1e-3


def test_unknown_callback_tensor_input_is_a_value_error(tiny_pipeline):
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs may name"):
        generate(tiny_pipeline, steps=1, callback_on_step_end=lambda *args: None, callback_on_step_end_tensor_inputs=["noise"])


# ------------------------------------------------------------------ return_dict, optional components


def test_return_dict_false_gives_a_tuple(tiny_pipeline):
    output = generate(tiny_pipeline, seed=2)
    images, face_masks = generate(tiny_pipeline, seed=2, return_dict=False)
    np.testing.assert_array_equal(images, output.images)
    torch.testing.assert_close(face_masks, output.face_masks, rtol=0, atol=0)
    assert output.to_tuple()[0] is output.images  # diffusers' BaseOutput


def test_pipeline_builds_without_its_optional_components(tiny_pipeline):
    assert set(CapHumanPipeline._optional_components) == {"face_recognizer", "body_controlnet"}
    required = {name: module for name, module in tiny_pipeline.components.items() if name not in CapHumanPipeline._optional_components}
    bare = CapHumanPipeline(**required)
    bare.set_progress_bar_config(disable=True)
    assert bare.face_recognizer is None and bare.body_controlnet is None
    np.testing.assert_array_equal(generate(bare, seed=3).images, generate(tiny_pipeline, seed=3).images)
    with pytest.raises(ValueError, match="no face recogniser"):
        generate(bare, steps=1, references=reference_faces(1))
    with pytest.raises(ValueError, match="needs a pipeline with a body_controlnet"):
        generate(bare, steps=1, body_map=torch.zeros(3, SIZE, SIZE), body_control_strength=1.0)


# ------------------------------------------------------------------ SamplingConfig -> pipeline kwargs


def test_every_sampling_setting_is_a_pipeline_argument_or_fixed_elsewhere():
    """A new SamplingConfig field must be mapped in pipeline_kwargs or listed here as not per call."""
    kwargs = SamplingConfig().pipeline_kwargs("concat")
    call = inspect.signature(CapHumanPipeline.__call__).parameters
    assert set(kwargs) <= set(call)
    fixed_elsewhere = {"scheduler", "height", "width", "seed", "dtype", "attention", "body_modes", "compile", "channels_last"}
    renamed = {"num_images": "num_images_per_prompt"}
    for field in dataclasses.fields(SamplingConfig):
        assert field.name in fixed_elsewhere or renamed.get(field.name, field.name) in kwargs, field.name
    assert kwargs["reference_fusion"] == "concat"
    # The config's defaults are the pipeline's: a call with the default config equals a bare call.
    assert all(call[name].default == value for name, value in SamplingConfig().pipeline_kwargs().items() if name != "negative_prompt")


def test_session_samples_with_the_config_kwargs(tiny_pipeline, monkeypatch):
    from caphuman.config import load_config
    from caphuman.session import CapHumanSession

    config = load_config("configs/tiny.yaml", {"sampling": {"tau": 500, "eta": 0.5}})
    calls = []
    with CapHumanSession(config, device="cpu") as session:
        session._pipeline = lambda *args, **kwargs: calls.append(kwargs)
        session._pipeline.device = torch.device("cpu")
        session.generate(PROMPT, [], hint(), guidance_scale=3.0)
    expected = dataclasses.replace(config.sampling, guidance_scale=3.0).pipeline_kwargs(config.model.reference_fusion)
    assert {name: calls[0][name] for name in expected} == expected
