"""The demo's callbacks without a browser: previews, generation, two people, files, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import yaml
from PIL import Image

from caphuman.demo.callbacks import DEFAULT_STYLE, DemoBackend, GenerationSettings, HeadControls, PersonInput, find_styles
from caphuman.errors import CapHumanError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(resolution=256, steps=2)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    astronaut = skimage.data.astronaut()
    paths = {name: folder / f"{name}.png" for name in ("face", "mirrored", "blank")}
    Image.fromarray(astronaut).save(paths["face"])
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(paths["mirrored"])
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(paths["blank"])
    paths["text"] = folder / "notes.jpg"
    paths["text"].write_text("not a photo")
    return paths


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    demo = DemoBackend("configs/tiny.yaml", tmp_path_factory.mktemp("weights"), "cpu", tmp_path_factory.mktemp("results"))
    yield demo
    demo.close()


def test_preview_redraws_the_head_at_the_slider_angles(backend, photos):
    from caphuman.head.hint import hint_preview
    from caphuman.head.params import set_pose

    person = [PersonInput(str(photos["face"]))]
    frontal = backend.preview(person, HeadControls(yaw=0.0))
    turned = backend.preview(person, HeadControls(yaw=35.0, pitch=5.0))
    # Independent of the demo: the head prior's own reconstruction, pose set, rendered.
    session = backend.faces
    params = session.head_prior.reconstruct(np.asarray(Image.open(photos["face"]).convert("RGB")))
    expected = hint_preview(session.hint(set_pose(params, 35.0, 5.0, None), 256, 256))
    np.testing.assert_array_equal(np.asarray(turned), np.asarray(expected))
    assert np.abs(np.asarray(turned, dtype=int) - np.asarray(frontal, dtype=int)).mean() > 1.0
    assert frontal.size == (3 * 256, 256)


def test_look_photo_lends_expression_and_lighting_only(backend, photos, monkeypatch):
    from caphuman.head.params import transfer

    person = PersonInput(str(photos["face"]))
    head = backend.person_head(person, HeadControls(look_photo=str(photos["mirrored"]), look_modes=["lighting"]))
    reference, look = backend.head(str(photos["face"])), backend.head(str(photos["mirrored"]))
    expected = transfer(reference, look, ["lighting"])
    torch.testing.assert_close(head.lighting, look.lighting)
    torch.testing.assert_close(head.rotation, reference.rotation)
    torch.testing.assert_close(head.expression, expected.expression)


def test_generate_writes_images_with_their_settings_and_reproduces(backend, photos):
    people = [PersonInput(str(photos["face"]))]
    settings = GenerationSettings(prompt="a photo of a person", seed=321, num_images=2, added_prompt="best quality", **FAST)
    first = backend.generate(people, HeadControls(yaw=20.0), settings)
    again = backend.generate(people, HeadControls(yaw=20.0), settings)
    assert len(first.images) == 2 and first.seed == 321
    for a, b in zip(first.images, again.images, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    config_file = [path for path in first.files if path.name == "config.yaml"][0]
    saved = yaml.safe_load(config_file.read_text())
    assert saved["sampling"]["seed"] == 321 and saved["sampling"]["num_images"] == 2 and saved["sampling"]["height"] == 256
    assert saved["run"]["yaw"] == 20.0 and saved["run"]["added_prompt"] == "best quality"
    assert saved["run"]["head_rotation_degrees"][0][0] == pytest.approx(20.0)
    # Each PNG carries the same settings, so a downloaded image alone says how it was made.
    assert Image.open(first.images[0]).text["caphuman_config"] == config_file.read_text()
    assert Image.open(first.images[0]).size == (256, 256)


def test_random_seed_is_drawn_and_reported(backend, photos):
    result = backend.generate([PersonInput(str(photos["face"]))], HeadControls(), GenerationSettings(seed=-1, **FAST))
    assert 0 <= result.seed < 2**32
    saved = yaml.safe_load((result.images[0].parent / "config.yaml").read_text())
    assert saved["sampling"]["seed"] == result.seed


def test_two_people_each_get_their_own_pass_side_by_side(backend, photos, monkeypatch):
    calls = []
    session = backend.session(DEFAULT_STYLE)
    original = session.generate

    def spy(prompt, references, hint, **kwargs):
        calls.append(kwargs.get("people"))
        return original(prompt, references, hint, **kwargs)

    monkeypatch.setattr(session, "generate", spy)
    people = [PersonInput(str(photos["face"])), PersonInput(str(photos["mirrored"]))]
    result = backend.generate(people, HeadControls(), GenerationSettings(seed=1, **FAST))
    assert len(result.images) == 1
    conditions = calls[-1]
    assert len(conditions) == 2 and all(len(person.references) == 1 for person in conditions)
    columns = [torch.nonzero((person.hint[0] != 0).any(dim=0))[:, 1].float().mean().item() for person in conditions]
    assert columns[0] < 128 < columns[1]  # person 1 on the left half, person 2 on the right
    # Each person's identity is their own photo's.
    assert not np.array_equal(conditions[0].references[0].recognizer_crop, conditions[1].references[0].recognizer_crop)


def test_several_photos_of_one_person_are_all_used(backend, photos, monkeypatch):
    seen = []
    session = backend.session(DEFAULT_STYLE)
    original = session.generate

    def spy(prompt, references, hint, **kwargs):
        seen.append(references)
        return original(prompt, references, hint, **kwargs)

    monkeypatch.setattr(session, "generate", spy)
    backend.generate([PersonInput(str(photos["face"]), more_references=[str(photos["mirrored"])])], HeadControls(), GenerationSettings(**FAST))
    assert len(seen[-1]) == 2


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(resolution=300), "multiple of 64"),
        (dict(num_images=13), "Images must be between 1 and 12"),
        (dict(steps=0), "Steps must be between 1 and 100"),
        (dict(guidance_scale=31), "Guidance scale"),
        (dict(tau=1001), "Identity start step"),
        (dict(seed=-5), "Seed must be -1"),
    ],
)
def test_bad_settings_are_one_sentence(backend, photos, change, message):
    with pytest.raises(CapHumanError, match=message):
        backend.generate([PersonInput(str(photos["face"]))], HeadControls(), GenerationSettings(**{**FAST, **change}))


def test_bad_photos_are_one_sentence(backend, photos):
    with pytest.raises(CapHumanError, match="not an image file"):
        backend.generate([PersonInput(str(photos["text"]))], HeadControls(), GenerationSettings(**FAST))
    with pytest.raises(CapHumanError, match="(?i)no face"):
        backend.generate([PersonInput(str(photos["blank"]))], HeadControls(), GenerationSettings(**FAST))
    with pytest.raises(CapHumanError, match="Upload a reference photo"):
        backend.preview([PersonInput(None)], HeadControls())


def test_out_of_memory_becomes_a_message(backend, photos, monkeypatch):
    session = backend.session(DEFAULT_STYLE)

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(session, "generate", out_of_memory)
    with pytest.raises(CapHumanError, match="ran out of memory"):
        backend.generate([PersonInput(str(photos["face"]))], HeadControls(), GenerationSettings(**FAST))
    assert not backend.gpu_lock.locked()


def test_missing_weights_is_a_message(tmp_path, photos):
    config = yaml.safe_load(Path("configs/tiny.yaml").read_text())
    config["model"]["caphuman"] = "no-such-adapter"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    demo = DemoBackend(str(tmp_path / "c.yaml"), tmp_path, "cpu", tmp_path / "out")
    with pytest.raises(CapHumanError, match="Missing CapHuman weights"):
        demo.generate([PersonInput(str(photos["face"]))], HeadControls(), GenerationSettings(**FAST))
    demo.close()


def test_sweep_from_the_page(backend, photos):
    result = backend.sweep(PersonInput(str(photos["face"])), HeadControls(), GenerationSettings(seed=3, **FAST), -20, 20, 3)
    assert len(result.frames) == 3 and result.gif.exists() and Image.open(result.strip).size == (3 * 256, 2 * 256)
    assert yaml.safe_load((result.strip.parent / "config.yaml").read_text())["run"]["yaws"] == [-20.0, 0.0, 20.0]


def test_styles_are_the_sd_files_under_the_weights_folder(tmp_path):
    def sparse(path: Path, size: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as stream:
            stream.truncate(size)  # sparse: no disk used

    sparse(tmp_path / "Realistic_Vision_V3.0.ckpt", 2 << 30)
    sparse(tmp_path / "styles" / "anime.safetensors", 2 << 30)
    sparse(tmp_path / "vae-ft-mse-840000-ema-pruned.ckpt", 2 << 30)  # a VAE is not a style
    sparse(tmp_path / "caphuman" / "adapter.safetensors", 100 << 20)  # too small for SD 1.5
    (tmp_path / "dreamlike").mkdir()
    (tmp_path / "dreamlike" / "model_index.json").write_text("{}")
    assert find_styles(tmp_path) == ["Realistic_Vision_V3.0.ckpt", "dreamlike", os.path.join("styles", "anime.safetensors")]
    assert find_styles(tmp_path / "missing") == []


def test_page_error_names_the_file_not_the_server_path():
    pytest.importorskip("gradio")
    from caphuman.demo.app import page_error

    error = page_error(CapHumanError("Input image '/tmp/gradio/abc123/holiday photo.jpg' is not an image file that can be read."))
    assert error.message == "Input image 'holiday photo.jpg' is not an image file that can be read."
    assert "ran out of memory" in page_error(torch.cuda.OutOfMemoryError()).message


def test_second_controlnet_strength_from_the_page(tmp_path, photos, tiny_backbone, monkeypatch):
    """With model.body_controlnet set, the page's strength reaches the pipeline with a pose map
    drawn from the photo, and changes the image; without it, asking for it is one sentence."""
    from diffusers import ControlNetModel

    from tests.models.test_body_controlnet import random_openpose_controlnet

    random_openpose_controlnet(tiny_backbone.unet).save_pretrained(tmp_path / "openpose")
    config = yaml.safe_load(Path("configs/tiny.yaml").read_text())
    config["model"]["body_controlnet"] = "openpose"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    demo = DemoBackend(str(tmp_path / "c.yaml"), tmp_path, "cpu", tmp_path / "out")
    assert demo.body_control_available()
    person = [PersonInput(str(photos["face"]))]
    off = demo.generate(person, HeadControls(), GenerationSettings(seed=2, **FAST))
    on = demo.generate(person, HeadControls(), GenerationSettings(seed=2, body_control_strength=1.0, **FAST))
    assert isinstance(demo.session(DEFAULT_STYLE).pipeline.body_controlnet, ControlNetModel)
    difference = np.abs(np.asarray(Image.open(on.images[0]), dtype=int) - np.asarray(Image.open(off.images[0]), dtype=int)).mean()
    assert difference > 1.0
    assert yaml.safe_load((on.images[0].parent / "config.yaml").read_text())["sampling"]["body_control_strength"] == 1.0
    demo.close()

    plain = DemoBackend("configs/tiny.yaml", tmp_path / "empty", "cpu", tmp_path / "out2")
    assert not plain.body_control_available()
    with pytest.raises(CapHumanError, match="needs the OpenPose ControlNet"):
        plain.generate(person, HeadControls(), GenerationSettings(body_control_strength=0.5, **FAST))
    plain.close()


def test_choosing_a_style_swaps_the_sd_file(tmp_path):
    with open(tmp_path / "dreamshaper.safetensors", "wb") as stream:
        stream.truncate(2 << 30)  # sparse
    demo = DemoBackend("configs/caphuman_sd15.yaml", tmp_path, "cpu", tmp_path / "out")  # nothing loads until used
    assert demo.styles() == [DEFAULT_STYLE, "dreamshaper.safetensors"]
    assert demo.config_for("dreamshaper.safetensors").model.stable_diffusion == str((tmp_path / "dreamshaper.safetensors").resolve())
    assert demo.config_for(DEFAULT_STYLE).model.stable_diffusion == demo.base_config.model.stable_diffusion
    with pytest.raises(CapHumanError, match="not an SD 1.5 file"):
        demo.config_for("other.ckpt")


def test_progress_follows_the_denoising_steps(backend, photos):
    """The page's progress bar must move during the denoising loop, not stop at 'Generating'
    until the images arrive (a 1024 px, 12-image run sat at 10% for minutes)."""
    reports: list[tuple[float, str]] = []
    settings = GenerationSettings(seed=5, resolution=256, steps=3)
    backend.generate([PersonInput(str(photos["face"]))], HeadControls(), settings, progress=lambda f, text: reports.append((f, text)))
    steps = [(fraction, text) for fraction, text in reports if text.startswith("Step")]
    assert [text for _, text in steps] == ["Step 1/3", "Step 2/3", "Step 3/3"]
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and 0.1 < steps[0][0] < steps[-1][0] <= 1.0


def test_no_face_names_the_photo(backend, photos):
    """The page has up to six photo slots: 'no face in the input photo' must say which one."""
    from caphuman.demo.app import page_error

    person = PersonInput(str(photos["face"]), pose=str(photos["blank"]))
    with pytest.raises(CapHumanError) as caught:
        backend.preview([person], HeadControls())
    assert str(page_error(caught.value).message) == "No face found in 'blank.png'."
    with pytest.raises(CapHumanError, match="blank.png"):
        backend.preview([PersonInput(str(photos["face"]))], HeadControls(look_photo=str(photos["blank"]), look_modes=["lighting"]))


def test_demo_on_a_busy_port_is_one_sentence(caplog):
    """A port already taken: one sentence and exit code 2 before any model loads, not gradio's traceback."""
    import socket

    from caphuman.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--config", "configs/tiny.yaml", "--port", str(port), "--device", "cpu"]) == 2
    assert f"Port {port} on 127.0.0.1 is in use" in caplog.text and "Traceback" not in caplog.text
