"""`caphuman sweep`: frames at the requested yaws with one seed, contact sheet, GIF and MP4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import yaml
from PIL import Image

from caphuman.cli import main
from caphuman.errors import CapHumanError
from caphuman.sweep import write_gif, yaw_angles

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 192  # large enough for the face mesh to read the head back from the hint
YAWS = [-30.0, 0.0, 30.0]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, photo) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    config = yaml.safe_load(Path("configs/tiny.yaml").read_text())
    config["sampling"].update(height=SIZE, width=SIZE, num_inference_steps=2)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(config))
    code = main(
        [
            "sweep",
            "--config",
            str(folder / "tiny.yaml"),
            "--ref",
            str(photo),
            "--prompt",
            "a photo of a person",
            "--yaw-from",
            "-30",
            "--yaw-to",
            "30",
            "--frames",
            "3",
            "--seed",
            "7",
            "--out",
            str(folder / "out"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    return folder / "out"


def test_yaw_angles_are_even_and_checked():
    assert yaw_angles(-45, 45, 7) == pytest.approx([-45, -30, -15, 0, 15, 30, 45])
    assert yaw_angles(10, 10, 1) == [10.0]
    for bad in [(0, 10, 0), (0, 10, 1000), (-120, 0, 3)]:
        with pytest.raises(CapHumanError):
            yaw_angles(*bad)


def test_bad_numbers_fail_before_any_model_loads(photo, tmp_path, capsys):
    assert main(["sweep", "--config", "configs/tiny.yaml", "--ref", str(photo), "--prompt", "x", "--frames", "0", "--out", str(tmp_path)]) == 2
    assert main(["sweep", "--config", "configs/tiny.yaml", "--ref", str(tmp_path / "missing.jpg"), "--prompt", "x", "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


def test_frames_hints_are_the_head_at_the_requested_yaws(sweep_dir, photo):
    """Each saved hint equals the reference head re-rendered directly by the head prior at that
    yaw; and reading the yaw back from the rendered head (face mesh fit) gives that yaw."""
    from caphuman.faces.detection import FaceDetector
    from caphuman.head.builtin.builtin_prior import BuiltinHeadPrior
    from caphuman.head.hint import hint_preview, render_hint
    from caphuman.head.params import set_pose

    with FaceDetector() as detector:
        prior = BuiltinHeadPrior(detector=detector)
        params = prior.reconstruct(np.asarray(Image.open(photo).convert("RGB")))
        read_back = []
        for index, yaw in enumerate(YAWS):
            expected = hint_preview(render_hint(prior, set_pose(params, yaw=yaw), image_size=SIZE).hint)
            saved = Image.open(sweep_dir / f"hint_{index:03d}.png")
            np.testing.assert_array_equal(np.asarray(saved), np.asarray(expected))
            shaded = np.ascontiguousarray(np.asarray(saved)[:, 2 * SIZE :])  # normals | albedo | shaded
            read_back.append(float(prior.reconstruct(shaded).rotation[0, 0]))
    assert read_back == pytest.approx(YAWS, abs=8.0)
    assert read_back[0] < read_back[1] < read_back[2]


def test_sheet_animation_and_settings(sweep_dir):
    frames = [Image.open(sweep_dir / f"frame_{index:03d}.png") for index in range(3)]
    assert all(frame.size == (SIZE, SIZE) for frame in frames)
    sheet = Image.open(sweep_dir / "sheet.png")
    assert sheet.size == (3 * SIZE, 2 * SIZE)
    np.testing.assert_array_equal(np.asarray(sheet.crop((SIZE, 0, 2 * SIZE, SIZE))), np.asarray(frames[1].convert("RGB")))

    gif = Image.open(sweep_dir / "sweep.gif")
    assert gif.info["loop"] == 0
    shown = []  # Pillow merges identical consecutive frames into one longer frame: expand them back
    for index in range(gif.n_frames):
        gif.seek(index)
        shown += [np.asarray(gif.convert("RGB"), dtype=float)] * round(gif.info["duration"] / (1000 / 6))
    assert len(shown) == 4  # forwards then back: 0 1 2 1, at the default 6 fps
    for picture, index in zip(shown, [0, 1, 2, 1], strict=True):
        assert np.abs(picture - np.asarray(frames[index].convert("RGB"), dtype=float)).mean() < 12  # 256-colour palette of a noise-like image
    settings = yaml.safe_load((sweep_dir / "config.yaml").read_text())
    assert settings["run"]["yaws"] == YAWS and settings["sampling"]["seed"] == 7


def test_mp4_has_every_frame(sweep_dir):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    reader = imageio_ffmpeg.read_frames(str(sweep_dir / "sweep.mp4"))
    meta = next(reader)
    frames = list(reader)
    reader.close()
    assert meta["size"] == (SIZE, SIZE)
    assert len(frames) == 4


def test_every_frame_shares_the_seed(tiny_pipeline):
    """Same noise for every frame: with identical hints the frames are identical, and a frame
    equals a plain generation with that seed."""
    from caphuman.sweep import render_sweep

    class FixedHintSession:  # records what the sweep asks for; generation is the real pipeline
        def __init__(self):
            self.hint_calls = []

        def hint(self, params, height, width):
            self.hint_calls.append(float(params.rotation[0, 0]))
            return torch.zeros(1, 9, 64, 64)

        def generate(self, prompt, references, hint, seed, num_images, **_):
            from tests.test_pipeline import identity_inputs

            assert num_images == 1
            return tiny_pipeline(prompt, hint, identity=identity_inputs(), num_inference_steps=2, generator=torch.Generator().manual_seed(seed))

    from tests.conditions.test_people import head_params

    session = FixedHintSession()
    frames = render_sweep(session, "a photo", [], head_params(), [-20.0, 20.0], seed=5)
    assert session.hint_calls == [-20.0, 20.0]
    np.testing.assert_array_equal(np.asarray(frames[0].image), np.asarray(frames[1].image))
    assert [frame.yaw for frame in frames] == [-20.0, 20.0]


def test_gif_without_bounce_keeps_the_frames(tmp_path):
    images = [Image.new("RGB", (8, 8), (value, 0, 0)) for value in (0, 120, 250)]
    write_gif(images, tmp_path / "a.gif", fps=5, bounce=False)
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 3 and gif.info["duration"] == 200


def _tiny_sweep(photo: Path, out: Path, frames: int, *extra: str) -> int:
    return main(
        ["sweep", "--config", "configs/tiny.yaml", "--ref", str(photo), "--prompt", "x", "--steps", "1", "--frames", str(frames)]
        + ["--yaw-from", "-10", "--yaw-to", "10", "--out", str(out), "--device", "cpu", *extra]
    )


def test_sweep_writes_only_into_a_folder_it_owns(photo, tmp_path):
    """A folder of someone else's files is refused untouched; a second sweep into the same
    folder needs --overwrite, which removes exactly the earlier sweep's files (a longer earlier
    sweep leaves no stale frames) and keeps files the user added."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "frame_000.png").write_bytes(b"mine")
    assert _tiny_sweep(photo, foreign, 2) == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["frame_000.png"] and (foreign / "frame_000.png").read_bytes() == b"mine"

    out = tmp_path / "out"
    assert _tiny_sweep(photo, out, 3) == 0
    assert (out / "frame_002.png").is_file()
    before = (out / "frame_000.png").read_bytes()
    assert _tiny_sweep(photo, out, 2) == 2  # no --overwrite: refused, nothing changed
    assert (out / "frame_002.png").is_file() and (out / "frame_000.png").read_bytes() == before

    (out / "notes.txt").write_text("keep me")
    assert _tiny_sweep(photo, out, 2, "--overwrite") == 0
    assert not (out / "frame_002.png").exists() and not (out / "hint_002.png").exists()
    assert (out / "frame_001.png").is_file() and (out / "notes.txt").read_text() == "keep me"


def test_nonsense_sweep_numbers_are_one_sentence(photo, tmp_path):
    for flag, value in [("--yaw-from", "nan"), ("--fps", "inf"), ("--frames", "1000"), ("--seed", "-1"), ("--pitch", "nan")]:
        assert _tiny_sweep(photo, tmp_path / "o", 2, flag, value) == 2, flag
    assert not (tmp_path / "o").exists()
