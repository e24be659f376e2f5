"""Training throughput (samples/s) and peak memory of one CapHuman training step.

A step is the real one: CapHumanTrainingModule.compute_loss (VAE encode, text and identity
conditions, CapFace + UNet, both losses), backward, AdamW step. Batches are synthetic records
of the dataset's format, so the figures measure the model, not data loading.

- tiny config (configs/tiny_train.yaml) on CPU, always;
- configs/train_sd15.yaml at batch 16, fp16 mixed precision, on a CUDA GPU when one is present
  (random SD 1.5 + CLIP ViT-L/14 weights: speed does not depend on the values); otherwise it
  prints that it was skipped.

Run: python benchmarks/bench_training.py [--steps 20] [--sd15-batch 16]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time

import torch

from caphuman.training.config import load_train_config


def synthetic_batch(batch_size: int, image_size: int, clip_size: int, embed_dim: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(batch_size, 1, image_size, image_size)
    quarter = image_size // 4
    mask[:, :, quarter:-quarter, quarter:-quarter] = 1.0
    return {
        "pixel_values": torch.rand(batch_size, 3, image_size, image_size, generator=generator) * 2 - 1,
        "clip_pixel_values": torch.randn(batch_size, 1, 3, clip_size, clip_size, generator=generator),
        "face_embeds": torch.nn.functional.normalize(torch.randn(batch_size, 1, embed_dim, generator=generator), dim=-1),
        "face_mask": mask,
        "hint": torch.rand(batch_size, 9, image_size, image_size, generator=generator) * mask,
        "caption": ["a photo of a person"] * batch_size,
        "drop_identity": torch.zeros(batch_size, dtype=torch.bool),
        "drop_hint": torch.zeros(batch_size, dtype=torch.bool),
    }


def measure(config, backbone, device: torch.device, steps: int, warmup: int = 2) -> tuple[float, float]:
    """(samples per second, peak memory in GiB: CUDA allocated on GPU, process max RSS on CPU)."""
    from caphuman.build import load_adapter
    from caphuman.config import CapHumanConfig
    from caphuman.training.module import CapHumanTrainingModule, step_generator

    adapter = load_adapter(CapHumanConfig(model=config.model), backbone, config.training.weights_dir)
    module = CapHumanTrainingModule(config, backbone, adapter).to(device)
    module.setup("fit")  # frozen backbone in half precision under mixed precision on CUDA
    module.train()
    optimizer = module.configure_optimizers()
    scaler = torch.amp.GradScaler("cuda") if config.training.precision == "16-mixed" and device.type == "cuda" else None
    precision = config.training.precision
    autocast = (
        torch.autocast(device.type, dtype=torch.float16 if precision == "16-mixed" else torch.bfloat16)
        if precision != "32-true"
        else contextlib.nullcontext()
    )
    data = config.training.data
    batch = synthetic_batch(data.batch_size, data.image_size, backbone.image_encoder.config.image_size, config.model.face_embedding_dim)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = None
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        with autocast:
            loss = module.compute_loss(batch, step_generator(0, step)).total
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    elapsed = time.perf_counter() - start
    return steps * data.batch_size / elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sd15-batch", type=int, default=16)
    parser.add_argument("--sd15-steps", type=int, default=10)
    args = parser.parse_args()

    from caphuman.models.tiny import tiny_backbone

    tiny = load_train_config("configs/tiny_train.yaml")
    rate, peak = measure(tiny, tiny_backbone(tiny.model.tiny), torch.device("cpu"), args.steps)
    print(
        f"tiny (configs/tiny_train.yaml), CPU x{torch.get_num_threads()} threads, batch {tiny.training.data.batch_size}, "
        f"64 px, fp32: {rate:.1f} samples/s, peak RSS {peak:.2f} GiB"
    )

    if not torch.cuda.is_available():
        print("sd15 (configs/train_sd15.yaml) batch 16 fp16: skipped, no CUDA GPU on this machine.")
        return
    from caphuman.models.tiny import random_sd15_backbone

    sd15 = load_train_config("configs/train_sd15.yaml", [f"training.data.batch_size={args.sd15_batch}"])
    device = torch.device("cuda")
    backbone = random_sd15_backbone(seed=0)
    for gradient_checkpointing in (True, False):
        config = load_train_config(
            "configs/train_sd15.yaml",
            [f"training.data.batch_size={args.sd15_batch}", f"training.gradient_checkpointing={str(gradient_checkpointing).lower()}"],
        )
        try:
            rate, peak = measure(config, backbone, device, args.sd15_steps)
            result = f"{rate:.2f} samples/s, peak allocated {peak:.1f} GiB"
        except torch.OutOfMemoryError:
            result = "out of memory"
        torch.cuda.empty_cache()
        print(
            f"sd15 (configs/train_sd15.yaml) on {torch.cuda.get_device_name(device)}, batch {args.sd15_batch}, 512 px, "
            f"{sd15.training.precision}, gradient checkpointing {'on' if gradient_checkpointing else 'off'}: {result}"
        )


if __name__ == "__main__":
    main()
