"""Time the built-in head prior on CPU: reconstruction of a photo and the 512 px hint render.

Usage: python benchmarks/bench_head.py [--runs 5] [--image photo.jpg] [--subdivisions 2]
Prints the median over ``--runs`` of each step (after one warm-up run).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import skimage.data
import skimage.io
import torch

from caphuman.head.builtin.builtin_prior import BuiltinHeadPrior
from caphuman.head.hint import render_hint
from caphuman.head.renderer import MeshRenderer

logger = logging.getLogger("bench_head")


def median_seconds(step, runs: int) -> float:
    step()  # warm-up: graph loading, caches
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default=None, help="RGB photo (default: skimage's astronaut)")
    parser.add_argument("--subdivisions", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    image = skimage.data.astronaut() if args.image is None else skimage.io.imread(args.image)[..., :3]
    prior = BuiltinHeadPrior(subdivisions=args.subdivisions)
    renderer = MeshRenderer(args.size)
    params = prior.reconstruct(image)
    with torch.no_grad():
        rows = [
            ("reconstruct (detect + fit + texture)", median_seconds(lambda: prior.reconstruct(image), args.runs)),
            ("mesh (params -> posed mesh)", median_seconds(lambda: prior.mesh(params), args.runs)),
            (f"render_hint {args.size}px", median_seconds(lambda: render_hint(prior, params, args.size, renderer), args.runs)),
        ]
    logger.info(
        "torch %s, %d threads, mesh %d vertices / %d triangles, %d runs",
        torch.__version__,
        torch.get_num_threads(),
        prior.num_vertices,
        prior.faces.shape[0],
        args.runs,
    )
    for name, seconds in rows:
        logger.info("%-40s %8.1f ms", name, 1000.0 * seconds)


if __name__ == "__main__":
    main()
