"""The example photos in assets/ are what their sources give, listed in assets/README.md, and small."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image
from skimage import data

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MAX_BYTES = 300_000


def grace_hopper() -> np.ndarray:
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as stream:
        return np.asarray(Image.open(stream).convert("RGB"))


# Each photo and the pixels its source package gives (see the table in assets/README.md).
SOURCES = {
    "astronaut.jpg": data.astronaut,
    "astronaut_mirrored.jpg": lambda: data.astronaut()[:, ::-1],
    "grace_hopper.jpg": grace_hopper,
    "cameraman.jpg": lambda: np.repeat(data.camera()[:, :, None], 3, axis=2),
}


def test_every_photo_is_listed_and_every_listed_photo_exists():
    listed = set(re.findall(r"^\| `([^`]+)` \|", (ASSETS / "README.md").read_text(encoding="utf-8"), flags=re.MULTILINE))
    present = {path.name for path in ASSETS.iterdir() if path.is_file() and path.name != "README.md"}
    assert listed == present == set(SOURCES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_photo_is_its_source_and_small(name):
    path = ASSETS / name
    assert path.stat().st_size < MAX_BYTES
    ours = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
    source = np.asarray(SOURCES[name]()).astype(np.float64)
    assert ours.shape == source.shape
    # JPEG at quality 90 moves pixels by a few levels on average; another photo differs by tens.
    assert np.abs(ours - source).mean() < 3.0
