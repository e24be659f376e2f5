"""Write a small folder of real face photos (from installed packages) with captions, for CPU demos.

The photos are public-domain portraits that ship with installed packages, so nothing is
downloaded: scikit-image's ``astronaut`` (Eileen Collins) and ``camera`` (the greyscale cameraman), and
matplotlib's ``grace_hopper.jpg``, each also flipped, cropped and rotated, so a tiny training run
sees several head positions and in-plane angles. ``captions.jsonl`` gives each photo a caption
in the format ``caphuman preprocess --captions`` reads ({"file": ..., "caption": ...} per line).

Usage (the documented tiny-training run, see configs/tiny_train.yaml):
  python scripts/make_demo_photos.py --out data/demo_photos
  caphuman preprocess --config configs/tiny_train.yaml --images data/demo_photos \\
      --captions data/demo_photos/captions.jsonl --out data/tiny_caphuman --image-size 64
  caphuman train --config configs/tiny_train.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from caphuman.outputs import atomic_path, write_text_atomically

logger = logging.getLogger("make_demo_photos")

CAPTIONS_FILE = "captions.jsonl"


@dataclass(frozen=True)
class DemoPhoto:
    """One photo to write: its file name, caption and how to make its pixels (H, W, 3) uint8 RGB."""

    file: str
    caption: str
    make: Callable[[], np.ndarray]


def astronaut() -> np.ndarray:
    """skimage's 512 x 512 portrait of astronaut Eileen Collins (NASA, public domain)."""
    from skimage import data

    return data.astronaut()


def grace_hopper() -> np.ndarray:
    """matplotlib's 600 x 512 portrait of Grace Hopper (US Navy, public domain)."""
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as stream:
        return np.asarray(Image.open(stream).convert("RGB"))


def cameraman() -> np.ndarray:
    """skimage's 512 x 512 greyscale cameraman (``data.camera``), as RGB (three equal channels)."""
    from skimage import data

    return np.repeat(data.camera()[:, :, None], 3, axis=2)


def flipped(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def rotated(image: np.ndarray, degrees: float, scale: float = 1.0) -> np.ndarray:
    """Rotate counter-clockwise about the centre (edge pixels fill the corners), then rescale."""
    from skimage import transform

    result = transform.rotate(image, degrees, mode="edge")
    if scale != 1.0:
        result = transform.rescale(result, scale, channel_axis=2)
    return (np.clip(result, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def cropped(image: np.ndarray, top: float, left: float, size: float) -> np.ndarray:
    """A square crop given as fractions of the image's height/width (top, left, side)."""
    height, width = image.shape[:2]
    side = int(size * min(height, width))
    y, x = int(top * height), int(left * width)
    return np.ascontiguousarray(image[y : y + side, x : x + side])


# Crops keep the whole head: the astronaut's face sits around (0.2, 0.45) of her photo, Grace
# Hopper's around (0.35, 0.5), the cameraman's around (0.2, 0.45).
DEMO_PHOTOS: tuple[DemoPhoto, ...] = (
    DemoPhoto("astronaut.png", "a photo of a woman in an orange space suit, smiling", astronaut),
    DemoPhoto("astronaut_flip.jpg", "a photo of a woman in an orange space suit, smiling", lambda: flipped(astronaut())),
    DemoPhoto("astronaut_crop.jpg", "a close-up photo of a smiling woman", lambda: cropped(astronaut(), 0.02, 0.14, 0.62)),
    DemoPhoto("astronaut_tilt.jpg", "a photo of a woman, head tilted", lambda: rotated(astronaut(), 15.0, 0.7)),
    DemoPhoto("grace.jpg", "a photo of a woman in a navy uniform", grace_hopper),
    DemoPhoto("grace_flip.jpg", "a photo of a woman in a navy uniform", lambda: flipped(grace_hopper())),
    DemoPhoto("grace_crop.jpg", "a close-up portrait of an older woman", lambda: cropped(grace_hopper(), 0.05, 0.1, 0.8)),
    DemoPhoto("grace_tilt.jpg", "a photo of a woman in uniform, head tilted", lambda: rotated(grace_hopper(), -12.0, 0.8)),
    DemoPhoto("cameraman.png", "a black and white photo of a man with a camera", cameraman),
    DemoPhoto("cameraman_flip.jpg", "a black and white photo of a man with a camera", lambda: flipped(cameraman())),
)


def make_demo_photos(out: str | os.PathLike, photos: tuple[DemoPhoto, ...] = DEMO_PHOTOS) -> list[Path]:
    """Write ``photos`` and ``captions.jsonl`` into ``out`` (created); returns the photo paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for photo in photos:
        path = folder / photo.file
        image = Image.fromarray(photo.make())
        options = {"quality": 92} if path.suffix.lower() in (".jpg", ".jpeg") else {}
        with atomic_path(path, suffix=path.suffix) as tmp:
            image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()], **options)
        written.append(path)
    lines = "".join(json.dumps({"file": photo.file, "caption": photo.caption}) + "\n" for photo in photos)
    write_text_atomically(folder / CAPTIONS_FILE, lines)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", default="data/demo_photos", help="folder to write (default data/demo_photos)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    written = make_demo_photos(args.out)
    logger.info("Wrote %d photos and %s to %s", len(written), CAPTIONS_FILE, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
