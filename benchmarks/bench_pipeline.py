"""Time CapHuman's sampler against diffusers' StableDiffusionControlNetPipeline, side by side.

Both run the SD 1.5-sized architecture with random weights (nothing is downloaded): the same
UNet, VAE and text encoder, and a ControlNet of CapFace's size. Prints seconds per denoising
step (from step-end callbacks), seconds per whole call (CapHuman's includes its one-off identity
encoding: CLIP ViT-L/14 vision + projections), peak memory, and the per-step ratio ours / diffusers.

    python benchmarks/bench_pipeline.py --steps 3 --size 512            # CPU
    python benchmarks/bench_pipeline.py --device cuda --dtype float16   # GPU
"""

from __future__ import annotations

import argparse
import gc
import logging
import threading
import time

import psutil

import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

from caphuman.conditions.identity import IdentityInputs
from caphuman.models.adapter import CapHumanAdapter
from caphuman.models.backbone import random_sd15_backbone
from caphuman.pipeline import CapHumanPipeline
from caphuman.schedulers import make_scheduler


class PeakMemory:
    """Peak memory while the block runs: CUDA's allocator peak, or on CPU the process's resident
    set sampled every 5 ms (the process max RSS would carry the other pipeline's peak over)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self) -> "PeakMemory":
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


class StepTimer:
    """Wall-clock stamps at the end of every denoising step (via the pipelines' callbacks)."""

    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def stamp(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())


def time_call(call, timer: StepTimer, repeats: int) -> tuple[float, float]:
    """(median seconds per denoising step, median seconds per whole call) after one warm-up.

    Seconds per step come from the gaps between step-end stamps, so one-off work (prompt and
    identity encoding, VAE) is not in them; the whole-call time includes it.
    """
    call()
    per_step, per_call = [], []
    for _ in range(repeats):
        timer.stamps = []
        timer.stamp()
        call()
        stamps = timer.stamps
        per_call.append(stamps[-1] - stamps[0])
        gaps = [later - earlier for earlier, later in zip(stamps[1:-1], stamps[2:-1])] or [stamps[-1] - stamps[0]]
        per_step.extend(gaps)
    return sorted(per_step)[len(per_step) // 2], sorted(per_call)[len(per_call) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per call (>= 3 so step gaps exist)")
    parser.add_argument("--size", type=int, default=512, help="image size in pixels")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per pipeline (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--guidance-scale", type=float, default=7.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    backbone = random_sd15_backbone(seed=0)
    adapter = CapHumanAdapter.from_unet(backbone.unet, 512, backbone.image_encoder.config.hidden_size, seed=0)
    controlnet = ControlNetModel.from_unet(backbone.unet, conditioning_channels=9)
    shared = dict(vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet)
    ours = CapHumanPipeline(
        **shared, capface=adapter.capface, identity_encoder=adapter.identity_encoder, image_encoder=backbone.image_encoder,
        image_processor=backbone.image_processor, scheduler=make_scheduler("ddim"),
    ).to(device, dtype)
    theirs = StableDiffusionControlNetPipeline(
        **shared, controlnet=controlnet, scheduler=make_scheduler("ddim"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).to(device, dtype)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)

    hint = torch.rand(1, 9, args.size, args.size)
    identity = IdentityInputs(torch.randn(1, 1, 512), torch.randn(1, 1, 3, 224, 224))
    prompt = "a photo of a person"

    timer = StepTimer(device)

    def run_ours():
        ours(prompt, hint, identity=identity, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
             generator=torch.Generator().manual_seed(0), output_type="latent", callback=lambda *_: timer.stamp())
        timer.stamp()

    def run_theirs():
        def on_step_end(pipe, step, timestep, tensors):
            timer.stamp()
            return tensors

        theirs(prompt, image=hint, height=args.size, width=args.size, num_inference_steps=args.steps,
               guidance_scale=args.guidance_scale, generator=torch.Generator().manual_seed(0), output_type="latent",
               callback_on_step_end=on_step_end)
        timer.stamp()

    results = {}
    with torch.inference_mode():
        for name, call in (("diffusers ControlNet", run_theirs), ("caphuman", run_ours)):
            gc.collect()
            with PeakMemory(device) as memory:
                per_step, per_call = time_call(call, timer, args.repeats)
            results[name] = (per_step, per_call, memory.peak_mb)

    print(f"device={device} dtype={args.dtype} size={args.size} steps={args.steps} guidance={args.guidance_scale} threads={torch.get_num_threads()}")
    print(f"{'pipeline':<22}{'s/step':>10}{'s/call':>10}{'peak MB':>12}")
    for name, (per_step, per_call, memory) in results.items():
        print(f"{name:<22}{per_step:>10.3f}{per_call:>10.3f}{memory:>12.0f}")
    ratio = results["caphuman"][0] / results["diffusers ControlNet"][0]
    print(f"ratio caphuman/diffusers (s/step): {ratio:.3f}")
    if device.type == "cpu":
        print("note: CPU peak memory is the resident set while that pipeline ran; both share the backbone's weights.")


if __name__ == "__main__":
    main()
