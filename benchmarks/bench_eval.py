"""Images per second of `caphuman eval`'s generation stage at several --batch-size values, same device.

Runs the eval harness's own generation code (caphuman.eval.runner.generate: blocks of units,
one pipeline call per batch, PNGs written atomically) on one identity photo and a benchmark spec
whose seeds are widened to --seeds, into a temporary run folder per batch size. The first call,
which loads the models and reads the reference, is not timed.

    python benchmarks/bench_eval.py                                   # tiny config, CPU, batch 1 vs 8
    python benchmarks/bench_eval.py --config configs/caphuman_sd15.yaml --weights checkpoints --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import skimage.data
import torch
from PIL import Image

from caphuman.build import resolve_device
from caphuman.config import load_config
from caphuman.eval.benchmark import find_identities, load_benchmark
from caphuman.eval.methods import MethodContext, get_method
from caphuman.eval.runner import generate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"), help="model + sampling config")
    parser.add_argument("--weights", default="checkpoints", help="weights folder (unused by the tiny config)")
    parser.add_argument("--benchmark", default=str(ROOT / "configs" / "benchmarks" / "smoke.yaml"), help="benchmark spec (prompts x conditions)")
    parser.add_argument("--identity", help="reference photo (default: skimage's astronaut)")
    parser.add_argument("--method", default="caphuman")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per (prompt, condition): images = prompts x conditions x seeds")
    parser.add_argument("--steps", type=int, help="override sampling.num_inference_steps")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.seeds < 1 or min(args.batch_sizes) < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--seeds, --steps and --batch-sizes must be >= 1.")

    device = resolve_device(args.device)
    config = load_config(args.config, {"sampling": {"num_inference_steps": args.steps}} if args.steps else {})
    spec = dataclasses.replace(load_benchmark(args.benchmark), seeds=list(range(args.seeds)))
    method = get_method(args.method)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "identities"
        folder.mkdir()
        if args.identity:
            (folder / Path(args.identity).name).write_bytes(Path(args.identity).read_bytes())
        else:
            Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
        identities = find_identities(folder, spec.default_subject, limit=1)
        images = len(spec.prompts) * len(spec.conditions) * len(spec.seeds)
        context = MethodContext(config, args.weights, device)
        try:
            warm_up = dataclasses.replace(spec, seeds=[0], prompts=spec.prompts[:1], conditions=spec.conditions[:1])
            generate(warm_up, identities, [method], Path(scratch) / "warm-up", context)
            print(
                f"device={device} config={args.config} size={config.sampling.height} steps={config.sampling.num_inference_steps} "
                f"method={method.name} images={images} threads={torch.get_num_threads()}"
            )
            print(f"{'batch':>6}{'seconds':>10}{'images/s':>10}")
            rates = {}
            for batch in args.batch_sizes:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                summary = generate(spec, identities, [method], Path(scratch) / f"batch{batch}", context, batch_size=batch)
                seconds = time.perf_counter() - start
                assert summary[0].generated == images
                rates[batch] = images / seconds
                print(f"{batch:>6}{seconds:>10.2f}{rates[batch]:>10.2f}", flush=True)
            first = args.batch_sizes[0]
            for batch in args.batch_sizes[1:]:
                print(f"speed-up batch {batch} / batch {first}: {rates[batch] / rates[first]:.2f}x")
        finally:
            context.close()


if __name__ == "__main__":
    main()
