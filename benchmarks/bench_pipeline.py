"""Images per second of CapHuman's sampler and diffusers' StableDiffusionControlNetPipeline, side by side.

Both run the SD 1.5-sized architecture with random weights (nothing is downloaded): the same
UNet, VAE and text encoder, and a ControlNet of CapFace's size fed the same 9-channel hint. Each
pipeline makes ``batch`` images per call (one prompt, ``num_images_per_prompt=batch``, one
generator per image), VAE decode included. Printed per batch size: seconds per call, images/s,
peak memory, and the ratio of images/s ours / diffusers. Speed options (``--compile``,
``--channels-last``) go to both pipelines alike (UNet + CapFace / UNet + ControlNet), in stages
of one process: first plain ("eager"), then with channels_last, then compiled (on top of
channels_last when both are given); the warm-up call per batch size, which compiles, is not timed.

    python benchmarks/bench_pipeline.py --device cuda --dtype float16                  # 512 px, 20 steps, batch 1 and 8
    python benchmarks/bench_pipeline.py --device cuda --dtype float16 --compile
    python benchmarks/bench_pipeline.py --steps 3 --size 256 --batch-sizes 1 2          # CPU, a few minutes
    python benchmarks/bench_pipeline.py --tiny --steps 2 --size 64                      # checks the script itself
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import threading
import time

import psutil
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

from caphuman.acceleration import apply_speed_options
from caphuman.conditions.identity import IdentityInputs
from caphuman.models.adapter import CapHumanAdapter
from caphuman.models.tiny import random_sd15_backbone, tiny_backbone
from caphuman.pipeline import CapHumanPipeline
from caphuman.schedulers import make_scheduler


class PeakMemory:
    """Peak memory while the block runs: CUDA's allocator peak, or on CPU the process's resident
    set sampled every 5 ms (the process max RSS would carry the other pipeline's peak over)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def seconds_per_call(call, device: torch.device, repeats: int) -> float:
    """Median wall-clock seconds of ``call()`` after one untimed warm-up (which compiles, if asked)."""
    call()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def build_pipelines(tiny: bool, device: torch.device, dtype: torch.dtype) -> tuple[CapHumanPipeline, StableDiffusionControlNetPipeline, int]:
    """(ours, diffusers', face-embedding width) on one shared random backbone."""
    backbone = tiny_backbone() if tiny else random_sd15_backbone(seed=0)
    face_dim = 32 if tiny else 512
    adapter = CapHumanAdapter.from_unet(backbone.unet, face_dim, backbone.image_encoder.config.hidden_size, seed=0)
    controlnet = ControlNetModel.from_unet(backbone.unet, conditioning_channels=9)
    shared = dict(vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet)
    ours = CapHumanPipeline(
        **shared,
        capface=adapter.capface,
        identity_encoder=adapter.identity_encoder,
        image_encoder=backbone.image_encoder,
        feature_extractor=backbone.feature_extractor,
        scheduler=make_scheduler("ddim"),
    ).to(device, dtype)
    theirs = StableDiffusionControlNetPipeline(
        **shared,
        controlnet=controlnet,
        scheduler=make_scheduler("ddim"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device, dtype)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    return ours, theirs, face_dim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per call (published: 20)")
    parser.add_argument("--size", type=int, default=512, help="image size in pixels")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="images per call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per pipeline and batch size (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--guidance-scale", type=float, default=7.0)
    parser.add_argument("--compile", action="store_true", help="then torch.compile UNet + CapFace / UNet + ControlNet and measure again")
    parser.add_argument("--channels-last", action="store_true", help="then switch to channels_last memory and measure again")
    parser.add_argument("--tiny", action="store_true", help="tiny components instead of SD 1.5 size (to check the script quickly)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.steps < 1 or args.size <= 0 or args.size % 8 or args.repeats < 1 or min(args.batch_sizes) < 1:
        parser.error("--steps, --repeats and --batch-sizes must be >= 1 and --size a positive multiple of 8.")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    ours, theirs, face_dim = build_pipelines(args.tiny, device, dtype)
    hint = torch.rand(1, 9, args.size, args.size, generator=torch.Generator().manual_seed(0))
    clip_size = ours.image_encoder.config.image_size
    identity = IdentityInputs(torch.randn(1, 1, face_dim), torch.randn(1, 1, 3, clip_size, clip_size))
    prompt = "a photo of a person"

    def generators(batch: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed) for seed in range(batch)]

    def run_ours(batch: int):
        ours(
            prompt,
            hint,
            identity=identity,
            num_images_per_prompt=batch,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            generator=generators(batch),
            output_type="np",
        )

    def run_theirs(batch: int):
        theirs(
            prompt,
            image=hint,
            height=args.size,
            width=args.size,
            num_images_per_prompt=batch,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            generator=generators(batch),
            output_type="np",
        )

    header = (
        f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}) dtype={args.dtype} "
        f"size={args.size} steps={args.steps} guidance={args.guidance_scale} "
        f"tiny={args.tiny} torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    print(header, flush=True)
    print(f"{'pipeline':<22}{'stage':>15}{'batch':>6}{'s/call':>10}{'images/s':>10}{'peak MB':>10}", flush=True)
    results = []
    stages = ["eager"] + (["channels_last"] if args.channels_last else []) + (["compiled"] if args.compile else [])
    for stage in stages:
        for pipe in (ours, theirs):  # each stage adds its option to what the previous ones set
            apply_speed_options(pipe, compile=stage == "compiled", channels_last=stage == "channels_last")
        with torch.inference_mode():
            for batch in args.batch_sizes:
                row = {}
                for name, call in (("diffusers ControlNet", run_theirs), ("caphuman", run_ours)):
                    gc.collect()
                    with PeakMemory(device) as memory:
                        seconds = seconds_per_call(functools.partial(call, batch), device, args.repeats)
                    row[name] = {"seconds_per_call": seconds, "images_per_s": batch / seconds, "peak_mb": memory.peak_mb}
                    print(f"{name:<22}{stage:>15}{batch:>6}{seconds:>10.3f}{batch / seconds:>10.2f}{memory.peak_mb:>10.0f}", flush=True)
                ratio = row["caphuman"]["images_per_s"] / row["diffusers ControlNet"]["images_per_s"]
                print(f"{'ratio ours/diffusers':<22}{stage:>15}{batch:>6}{'':>10}{ratio:>10.3f}", flush=True)
                results.append({"stage": stage, "batch": batch, "ratio_images_per_s": ratio, **row})
                if args.json:  # after every row, so a run cut short keeps what it measured
                    with open(args.json, "w", encoding="utf-8") as stream:
                        json.dump({"settings": header, "results": results}, stream, indent=2)
    if device.type == "cpu":
        print("note: CPU peak memory is the resident set while that pipeline ran; both share the backbone's weights.")


if __name__ == "__main__":
    main()
