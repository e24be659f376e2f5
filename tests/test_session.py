"""CapHumanSession: the one path from photos to model inputs, on the tiny config (offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from caphuman.config import load_config
from caphuman.errors import CapHumanError, InputImageError
from caphuman.session import CapHumanSession

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with CapHumanSession(load_config("configs/tiny.yaml"), weights_dir=tmp_path_factory.mktemp("w"), device="cpu") as opened:
        yield opened


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def test_photo_to_images_through_the_session(session, astronaut, tmp_path):
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    references = session.reference_faces(path)
    assert len(references) == 1 and references[0].clip_crop.shape == (224, 224, 3)
    # A path and the same pixels as an array give the same inputs.
    from_array = session.reference_faces(astronaut)[0]
    np.testing.assert_array_equal(references[0].recognizer_crop, from_array.recognizer_crop)
    params = session.head(path)
    hint = session.hint(params)
    assert hint.shape == (1, 9, 64, 64)
    output = session.generate("a photo of a person", references, hint, num_inference_steps=2, num_images=2)
    assert len(output.images) == 2 and output.images[0].size == (64, 64)
    # Same seed, same images; another seed, other images.
    again = session.generate("a photo of a person", references, hint, num_inference_steps=2, num_images=2)
    other = session.generate("a photo of a person", references, hint, num_inference_steps=2, num_images=2, seed=1)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(output.images[0]))
    assert not np.array_equal(np.asarray(other.images[0]), np.asarray(output.images[0]))


def test_non_square_hint_is_the_centre_of_the_square_render(session, astronaut):
    params = session.head(astronaut)
    wide = session.hint(params, 64, 96)
    square = session.hint(params, 96, 96)
    assert wide.shape == (1, 9, 64, 96)
    torch.testing.assert_close(wide, square[..., 16:80, :])


def test_square_512_photo_gives_the_same_head_under_squash_and_pad(astronaut, tmp_path):
    heads = {}
    for fit in ("squash", "pad"):
        config = load_config("configs/tiny.yaml", {"head": {"photo_fit": fit}})
        with CapHumanSession(config, weights_dir=tmp_path, device="cpu") as opened:
            np.testing.assert_array_equal(opened.head_input(astronaut), astronaut)
            heads[fit] = opened.head(astronaut)
    torch.testing.assert_close(heads["squash"].rotation, heads["pad"].rotation)
    torch.testing.assert_close(heads["squash"].camera, heads["pad"].camera)


def test_face_index_picks_the_same_face_for_mtcnn_and_our_detector(session, astronaut):
    """Two faces: index 0 is the larger for both detectors, index 1 the smaller one."""
    face = astronaut[30:230, 150:310]
    small = np.asarray(Image.fromarray(face).resize((100, 125)))
    canvas = np.full((400, 600, 3), 200, np.uint8)
    canvas[50:250, 20:180] = face
    canvas[100:225, 420:520] = small
    first = session.reference_inputs(canvas, face_index=0)
    second = session.reference_inputs(canvas, face_index=1)
    assert first.recognizer_crop_source == second.recognizer_crop_source == "mtcnn"
    assert first.face.box[0] < 300 < second.face.box[0]
    # Each FaceNet crop is MTCNN's box of its own face, cut as MTCNN cuts (int box, PIL bilinear).
    from facenet_pytorch import MTCNN

    boxes, _ = MTCNN(image_size=160, margin=0).detect(Image.fromarray(canvas))
    assert len(boxes) == 2
    for inputs, on_the_right in ((first, False), (second, True)):
        box = next(b for b in boxes if (b[0] > 300) == on_the_right)
        expected = np.asarray(Image.fromarray(canvas).crop(tuple(int(v) for v in box)).resize((160, 160), Image.BILINEAR))
        np.testing.assert_array_equal(inputs.recognizer_crop, expected)
    with pytest.raises(InputImageError, match="out of range"):
        session.reference_inputs(canvas, face_index=2)


def test_training_records_hold_the_sampling_inputs(session, astronaut, tmp_path):
    """Preprocessing for training and sampling share the session: same CLIP input, same embedding."""
    from caphuman.data.preprocess import PhotoProcessor

    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    processor = PhotoProcessor(session.config, tmp_path, image_size=64, device="cpu")
    try:
        record = processor.process(path, "astronaut.png", "a photo")
    finally:
        processor.close()
    references = session.reference_faces(path)
    np.testing.assert_array_equal(record.clip_crop, references[0].clip_crop)
    np.testing.assert_allclose(record.face_embedding, session.embed(references)[0].numpy(), atol=1e-6)


def test_generate_rejects_settings_it_cannot_change_per_call(session):
    with pytest.raises(CapHumanError, match="height"):
        session.sampling_settings(height=128)
    with pytest.raises(CapHumanError, match="num_steps"):
        session.sampling_settings(num_steps=3)
    with pytest.raises(CapHumanError, match="sampling.eta"):
        session.sampling_settings(eta=-1.0)
    assert session.sampling_settings(eta=0.5, guidance_scale=None).eta == 0.5


def test_added_prompt_is_the_joined_prompt(session, astronaut):
    references = session.reference_faces(astronaut)
    hint = session.hint(session.head(astronaut))
    run = lambda prompt, added="": np.asarray(session.generate(prompt, references, hint, a_prompt=added, num_inference_steps=2).images[0])  # noqa: E731
    added = run("a photo of a person", "in the snow")
    np.testing.assert_array_equal(added, run("a photo of a person, in the snow"))
    assert not np.array_equal(added, run("a photo of a person"))


def test_preprocess_without_the_configured_parser_file_stops_before_any_photo(astronaut, tmp_path):
    import yaml

    from caphuman.data.preprocess import PreprocessSettings, preprocess_folder
    from caphuman.errors import MissingWeightsError

    (tmp_path / "photos").mkdir()
    Image.fromarray(astronaut).save(tmp_path / "photos" / "astronaut.png")
    config = yaml.safe_load(open("configs/tiny.yaml"))
    config["identity"] = {"face_parser": "bisenet"}
    (tmp_path / "bisenet.yaml").write_text(yaml.safe_dump(config))
    settings = PreprocessSettings(
        images=str(tmp_path / "photos"),
        out=str(tmp_path / "out"),
        config=str(tmp_path / "bisenet.yaml"),
        weights=str(tmp_path / "none"),
        image_size=64,
    )
    with pytest.raises(MissingWeightsError, match="79999_iter.pth"):
        preprocess_folder(settings, progress=False)
    assert not (tmp_path / "out" / "report.json").exists()
    assert not (tmp_path / "out" / "report.json").exists()


def test_head_of_a_photo_without_a_face_names_the_file(session, tmp_path):
    """--pose-ref and --person photos reach the head prior first: its error must name the file."""
    path = tmp_path / "coffee_cup.png"
    Image.fromarray(data.coffee()).save(path)
    with pytest.raises(InputImageError, match="coffee_cup.png"):
        session.head(str(path))
    with pytest.raises(InputImageError, match="No face found in the photo"):
        session.head(data.coffee())
