"""Evaluation metrics on cases with known answers.

Ground truth comes from outside the code under test: hand-made vectors and coefficient arrays
with answers worked out by hand, the same photo scored twice, renders of a reconstructed head at
angles we set, and mirror images (which negate yaw and roll).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import skimage.data
import torch

from caphuman.eval.clip_score import ClipScorer, clip_t_scores, prompt_hits
from caphuman.eval.diversity import pairwise_identity_distance
from caphuman.eval.head_metrics import head_errors, pose_error_degrees, rmse
from caphuman.eval.identity_similarity import cosine_similarity, resolve_identity_model
from caphuman.head.params import HeadParams, set_pose

# Render -> mediapipe -> fit round trips of the built-in prior are within ~6 degrees per axis up
# to |yaw| 45 (tests/head/test_prior.py); the geodesic error combines the three axes.
ROUND_TRIP_DEG = 10.0
MIRROR_YAW_DEG = 7.0


def test_cosine_similarity_known_answers() -> None:
    v = np.array([0.3, -1.2, 2.0])
    assert cosine_similarity(v, v) == pytest.approx(1.0)
    assert cosine_similarity(v, 5.0 * v) == pytest.approx(1.0)
    assert cosine_similarity(v, -v) == pytest.approx(-1.0)
    assert cosine_similarity([1.0, 0.0], [0.0, 2.0]) == pytest.approx(0.0)
    assert cosine_similarity([1.0, 0.0], [1.0, 1.0]) == pytest.approx(math.sqrt(0.5))
    with pytest.raises(ValueError):
        cosine_similarity([0.0, 0.0], [1.0, 0.0])


def test_same_photo_has_identity_similarity_one_and_another_person_less() -> None:
    from matplotlib import cbook
    from PIL import Image

    from caphuman.faces.detection import FaceDetector

    model = resolve_identity_model("dlib", "no-weights-here")
    astronaut = skimage.data.astronaut()
    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    with FaceDetector() as detector:
        a1 = model.embed_face(astronaut, detector.detect(astronaut)[0])
        a2 = model.embed_face(astronaut.copy(), detector.detect(astronaut.copy())[0])
        h = model.embed_face(hopper, detector.detect(hopper)[0])
    assert cosine_similarity(a1, a2) == pytest.approx(1.0, abs=1e-9)
    assert pairwise_identity_distance([a1, a2]) == pytest.approx(0.0, abs=1e-9)
    # dlib's published rule: a Euclidean distance above 0.6 means two different people.
    assert np.linalg.norm(a1 - h) > 0.6
    assert cosine_similarity(a1, h) < cosine_similarity(a1, a2)


def test_diversity_known_answers() -> None:
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 3.0])
    assert pairwise_identity_distance([e1, e1, e1]) == pytest.approx(0.0)
    assert pairwise_identity_distance([e1, e2]) == pytest.approx(1.0)
    # pairs (e1, e2) = 1, (e1, e1) = 0, (e2, e1) = 1
    assert pairwise_identity_distance([e1, e2, e1]) == pytest.approx(2.0 / 3.0)
    assert pairwise_identity_distance([e1, -e1]) == pytest.approx(2.0)
    assert math.isnan(pairwise_identity_distance([e1]))


def test_rmse_on_hand_made_arrays() -> None:
    assert rmse(np.zeros(5), np.full(5, 0.3)) == pytest.approx(0.3)
    assert rmse([1.0, -1.0], [0.0, 0.0]) == pytest.approx(1.0)
    assert rmse([3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        rmse(np.zeros(3), np.zeros(4))


def _params(**changes) -> HeadParams:
    params = HeadParams(
        shape=torch.zeros(1, 6),
        expression=torch.zeros(1, 8),
        jaw=torch.zeros(1, 3),
        rotation=torch.zeros(1, 3),
        camera=torch.tensor([[1.0, 0.0, 0.0]]),
        albedo=torch.full((1, 4, 3), 0.5),
        lighting=torch.zeros(1, 9, 3),
        backend="builtin",
    )
    for name, value in changes.items():
        setattr(params, name, value)
    return params


def test_head_errors_group_by_group() -> None:
    requested = _params(rotation=torch.tensor([[10.0, 0.0, 0.0]]))
    estimated = _params(
        shape=torch.full((1, 6), 0.2),
        expression=torch.full((1, 8), 0.1),
        lighting=torch.zeros(1, 9, 3),
        camera=torch.tensor([[2.0, 0.5, 0.5]]),  # position is not one of the paper's groups
    )
    errors = head_errors(requested, estimated)
    assert errors.shape_rmse == pytest.approx(0.2)
    assert errors.pose_rmse == pytest.approx(math.radians(10.0) / math.sqrt(3.0))
    # expression (8 values off by 0.1) and jaw (3 exact values) form one group of 11
    assert errors.expression_rmse == pytest.approx(math.sqrt(8 * 0.01 / 11))
    assert errors.lighting_rmse == pytest.approx(0.0)
    assert errors.pose_error_deg == pytest.approx(10.0, abs=1e-6)
    assert errors.estimated_yaw == pytest.approx(0.0)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((0, 0, 0), (0, 0, 0), 0.0),
        ((30, 0, 0), (-30, 0, 0), 60.0),
        ((0, 20, 0), (0, 0, 0), 20.0),
        ((0, 0, 25), (0, 0, -5), 30.0),
        ((15, 10, 5), (15, 10, 5), 0.0),
    ],
)
def test_pose_error_is_the_geodesic_angle(a, b, expected) -> None:
    assert pose_error_degrees(np.array(a, float), np.array(b, float)) == pytest.approx(expected, abs=1e-5)


@pytest.fixture(scope="module")
def head_setup():
    from caphuman.head.builtin.builtin_prior import BuiltinHeadPrior
    from caphuman.head.renderer import MeshRenderer

    prior = BuiltinHeadPrior()
    reference = prior.reconstruct(skimage.data.astronaut())
    reference.camera[:, 1:] = torch.tensor([0.0, 0.05])  # centred in the render
    return prior, MeshRenderer(512), reference


def _render(prior, renderer, params) -> np.ndarray:
    """The shaded render over grey, as an RGB uint8 photo."""
    output = renderer.render_mesh(prior.mesh(params))
    image = output.shaded[0] * output.mask[0] + 0.5 * (1.0 - output.mask[0])
    return np.ascontiguousarray((image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8))


@pytest.mark.parametrize("yaw", [-30.0, 0.0, 30.0])
def test_render_at_known_pose_has_small_pose_error_and_mirror_negates_yaw(head_setup, yaw) -> None:
    prior, renderer, reference = head_setup
    requested = set_pose(reference, yaw=yaw, pitch=0.0, roll=0.0)
    image = _render(prior, renderer, requested)
    estimate = head_errors(requested, prior.reconstruct(image))
    assert estimate.pose_error_deg < ROUND_TRIP_DEG
    wrong = head_errors(set_pose(reference, yaw=yaw + 40.0, pitch=0.0, roll=0.0), prior.reconstruct(image))
    assert wrong.pose_error_deg > 30.0  # the metric does see a wrong pose

    mirrored = head_errors(requested, prior.reconstruct(np.ascontiguousarray(image[:, ::-1])))
    assert abs(mirrored.estimated_yaw + yaw) < MIRROR_YAW_DEG
    if yaw != 0.0:
        assert mirrored.pose_error_deg > abs(2 * yaw) - ROUND_TRIP_DEG


def test_clip_t_and_prompt_accuracy_on_hand_made_embeddings() -> None:
    e1, e2 = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    at_60 = np.array([[0.5, math.sqrt(3.0) / 2.0]])
    assert clip_t_scores(e1, 3.0 * e1)[0] == pytest.approx(100.0)
    assert clip_t_scores(e1, e2)[0] == pytest.approx(0.0)
    assert clip_t_scores(e1, -e1)[0] == 0.0  # negative cosine is clamped, as in torchmetrics
    assert clip_t_scores(e1, at_60)[0] == pytest.approx(50.0)
    prompts = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1]])
    images = np.array([[0.9, 0.1], [0.2, 0.8], [-0.5, 0.0]])
    assert prompt_hits(images, prompts, [0, 1, 2]).tolist() == [True, True, True]
    assert prompt_hits(images, prompts, [1, 0, 0]).tolist() == [False, False, False]


def test_clip_scorer_loads_a_full_clip_folder_and_skips_others(tmp_path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from caphuman.models.tiny import tiny_tokenizer

    missing = ClipScorer.from_dir(tmp_path / "nothing")
    assert missing.scorer is None and "nothing" in missing.note
    vision_only = tmp_path / "vision"
    vision_only.mkdir()
    (vision_only / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    assert ClipScorer.from_dir(vision_only).scorer is None

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "projection_dim": 16,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 16,
        },
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    folder = tmp_path / "clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)

    loaded = ClipScorer.from_dir(folder)
    assert loaded.scorer is not None
    image = skimage.data.astronaut()
    texts = ["a photo of a person", "an oil painting of a cat"]
    image_embeds = loaded.scorer.embed_images([image])
    text_embeds = loaded.scorer.embed_texts(texts)
    assert np.allclose(np.linalg.norm(text_embeds, axis=1), 1.0)
    # Independent path: the model's own projections through the processor and tokenizer.
    with torch.no_grad():
        pixels = loaded.scorer.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        direct_image = model.get_image_features(pixel_values=pixels)
        tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        direct_text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    direct_image = getattr(direct_image, "pooler_output", direct_image)
    direct_text = getattr(direct_text, "pooler_output", direct_text)
    expected = torch.nn.functional.cosine_similarity(direct_image, direct_text).numpy() * 100.0
    scores = clip_t_scores(np.repeat(image_embeds, 2, axis=0), text_embeds)
    assert scores == pytest.approx(np.maximum(expected, 0.0), abs=1e-3)
