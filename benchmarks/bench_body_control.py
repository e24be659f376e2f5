"""The second (OpenPose) ControlNet at SD 1.5 size, random weights (nothing is downloaded).

Prints:
1. parity: CapHuman's sampler with CapFace off and the OpenPose ControlNet on vs diffusers'
   StableDiffusionControlNetPipeline on the same parts (max |difference| of the final latents);
2. loading: the ControlNet written in the original single-file layout (control_model.* keys, as
   control_v11p_sd15_openpose.pth) and read back by caphuman's loader: seconds, and whether every
   weight came back equal;
3. speed: seconds per denoising step with the branch off (strength 0) and on, and their ratio;
4. the pose map: seconds to find body + hand keypoints with mediapipe and draw a 512 map (CPU).

    python benchmarks/bench_body_control.py                               # CPU (slow at 512: use --size 256)
    python benchmarks/bench_body_control.py --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from safetensors.torch import save_file

from caphuman.conditions.identity import IdentityInputs
from caphuman.models.adapter import CapHumanAdapter
from caphuman.models.body_controlnet import load_body_controlnet, original_controlnet_state_dict
from caphuman.models.tiny import random_sd15_backbone
from caphuman.pipeline import CapHumanPipeline
from caphuman.schedulers import make_scheduler


def seconds_per_step(call, device: torch.device, repeats: int) -> float:
    """Median gap between step-end callbacks over ``repeats`` calls, after one warm-up."""
    stamps: list[float] = []

    def stamp(*_):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    call(stamp)
    gaps = []
    for _ in range(repeats):
        stamps.clear()
        call(stamp)
        gaps.extend(later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False))
    return sorted(gaps)[len(gaps) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    backbone = random_sd15_backbone(seed=0, with_clip_vision=False)
    adapter = CapHumanAdapter.from_unet(backbone.unet, 512, backbone.image_encoder.config.hidden_size, seed=0)
    controlnet = ControlNetModel.from_unet(backbone.unet, conditioning_channels=3)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random zero convs: the branch really acts
        for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out]:
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.01)

    # 2. loading (before moving anything to the device)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "control_v11p_sd15_openpose.safetensors"
        save_file({k: v.contiguous() for k, v in original_controlnet_state_dict(controlnet).items()}, path)
        start = time.perf_counter()
        loaded = load_body_controlnet(path, unet_config=backbone.unet.config)
        load_seconds = time.perf_counter() - start
        expected = controlnet.state_dict()
        equal = all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
        size_mb = path.stat().st_size / 2**20
    del loaded

    shared = dict(vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet)
    ours = CapHumanPipeline(
        **shared,
        capface=adapter.capface,
        identity_encoder=adapter.identity_encoder,
        image_encoder=backbone.image_encoder,
        feature_extractor=backbone.feature_extractor,
        scheduler=make_scheduler("ddim"),
        body_controlnet=controlnet,
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

    pose = torch.zeros(1, 3, args.size, args.size)
    pose[:, :, args.size // 4 : args.size // 2, args.size // 3 : args.size // 3 + 8] = 1.0
    hint = torch.rand(1, 9, args.size, args.size)
    vision_size = backbone.image_encoder.config.image_size
    identity = IdentityInputs(torch.randn(1, 1, 512), torch.randn(1, 1, 3, vision_size, vision_size))
    prompt = "a photo of a person raising a hand"

    def run_ours(strength: float, capface: float = 1.0, callback=None):
        return ours(
            prompt,
            hint,
            identity=identity,
            num_inference_steps=args.steps,
            negative_prompt="missing fingers",
            capface_strength=capface,
            body_map=pose,
            body_control_strength=strength,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
            callback_on_step_end=callback,
        ).images

    with torch.inference_mode():
        # 1. parity
        mine = run_ours(1.0, capface=0.0)
        reference = theirs(
            prompt,
            image=pose,
            height=args.size,
            width=args.size,
            num_inference_steps=args.steps,
            negative_prompt="missing fingers",
            controlnet_conditioning_scale=1.0,
            guidance_scale=7.0,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).images
        parity = (mine.float() - reference.float()).abs().max().item()
        scale = reference.float().abs().max().item()
        # 3. speed
        off = seconds_per_step(lambda cb: run_ours(0.0, callback=cb), device, args.repeats)
        on = seconds_per_step(lambda cb: run_ours(1.0, callback=cb), device, args.repeats)

    # 4. pose map (mediapipe runs on the CPU)
    from skimage import data

    from caphuman.body.keypoints import BodyKeypointDetector
    from caphuman.body.openpose_map import draw_openpose_map

    photo = data.astronaut()
    with BodyKeypointDetector(hands=True) as detector:
        detector(photo)  # warm-up
        start = time.perf_counter()
        keypoints = detector(photo)
        detect_seconds = time.perf_counter() - start
    start = time.perf_counter()
    draw_openpose_map(keypoints, None, 512, 512, "body,hand")
    draw_seconds = time.perf_counter() - start

    print(f"device={device} dtype={args.dtype} size={args.size} steps={args.steps}")
    print(f"parity vs StableDiffusionControlNetPipeline (CapFace off, body strength 1): max|diff| latents = {parity:.2e} (latents up to {scale:.2f})")
    print(f"original-layout file {size_mb:.0f} MB: loaded in {load_seconds:.1f} s, all weights equal: {equal}")
    print(f"s/step: body control off {off:.4f}, on {on:.4f}, ratio {on / off:.3f}")
    print(f"pose map: mediapipe pose + hands {detect_seconds * 1000:.0f} ms, drawing 512 px {draw_seconds * 1000:.1f} ms (CPU)")


if __name__ == "__main__":
    main()
