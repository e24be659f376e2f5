"""Learning check: after a few CPU minutes of training, the tiny model's samples follow the
requested head pose measurably better than the untrained model's.

Why a proxy: the tiny model (random frozen UNet/VAE, 64 px) never makes faces that a
face-landmark-based head prior can read, so the pose of a generated image is measured by
template matching instead:

- data: the built-in head prior reconstructs the astronaut photo (skimage, public domain); the
  head is re-posed at random (yaw in [-40, 40], pitch in [-20, 20] degrees) and rendered with the
  photo's camera at 160 px, from which a 64 px window around the head is cut. The hint is that render (9 channels); the training target image is the
  shaded render on a grey background. Identity inputs and caption are fixed.
- pose readout: a generated image's pose is the pose of the nearest (L2) template among
  target images rendered on a 5-degree grid and passed through the same frozen VAE
  (encode -> decode), since that is the closest any latent can get through the random decoder.
- figures: mean |yaw error| and |pitch error| over held-out random poses, for the untrained
  model (fresh CapFace: zero convolutions), the trained model, the readout's own floor (the
  VAE round trip of the true target) and chance (the mean error of a pose-blind guess).

Run: python benchmarks/learning_check.py --minutes 4
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import IterableDataset

logger = logging.getLogger("learning_check")

IMAGE_SIZE = 64
YAW_RANGE, PITCH_RANGE = 40.0, 20.0
GRID_STEP = 5.0
BACKGROUND = 0.5


def render_targets(
    prior, base_params, poses: torch.Tensor, renderer, window: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hints (N, 9, S, S), target images (N, 3, S, S) in [-1, 1] and masks (N, 1, S, S) for (N, 2)
    yaw/pitch: rendered at the renderer's size with the photo's camera, then the S x S window at
    ``window`` (top, left) is cut out, so the head fills most of the frame."""
    from caphuman.head.hint import render_hint

    hints, images, masks = [], [], []
    for chunk in poses.split(32):
        params = base_params.clone()
        for field in ("shape", "expression", "jaw", "rotation", "camera", "albedo", "lighting"):
            value = getattr(params, field)
            setattr(params, field, value.expand(len(chunk), *value.shape[1:]).clone())
        params.rotation[:, 0], params.rotation[:, 1], params.rotation[:, 2] = chunk[:, 0], chunk[:, 1], 0.0
        head = render_hint(prior, params, renderer.height, renderer=renderer)
        top, left = window
        hint = head.hint[:, :, top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
        mask = head.mask[:, :, top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
        image = hint[:, 6:9] * mask + BACKGROUND * (1 - mask)
        hints.append(hint)
        images.append(image * 2 - 1)
        masks.append(mask)
    return torch.cat(hints), torch.cat(images), torch.cat(masks)


class PoseRenders(IterableDataset):
    """Records of the pre-rendered pool in a seeded order per epoch (the CapHumanDataset contract)."""

    def __init__(self, hints, images, masks, face_embeds, clip_pixels, seed: int = 0):
        self.hints, self.images, self.masks = hints, images, masks
        self.face_embeds, self.clip_pixels = face_embeds, clip_pixels
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def record(self, index: int) -> dict:
        return {
            "pixel_values": self.images[index],
            "clip_pixel_values": self.clip_pixels,
            "face_embeds": self.face_embeds,
            "face_mask": self.masks[index],
            "hint": self.hints[index],
            "caption": "a photo of a person",
            "drop_identity": False,
            "drop_hint": False,
            "key": f"pose{index:04d}",
        }

    def __iter__(self):
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.seed * 1009 + self.epoch))
        for index in order.tolist():
            yield self.record(index)


def collate(records: list[dict]) -> dict:
    batch = {k: torch.stack([r[k] for r in records]) for k in ("pixel_values", "clip_pixel_values", "face_embeds", "face_mask", "hint")}
    batch["caption"] = [r["caption"] for r in records]
    batch["key"] = [r["key"] for r in records]
    batch["drop_identity"] = torch.tensor([r["drop_identity"] for r in records])
    batch["drop_hint"] = torch.tensor([r["drop_hint"] for r in records])
    return batch


class TimeLimit:
    """A Lightning callback that stops training after ``seconds``."""

    def __new__(cls, seconds: float):
        import lightning.pytorch as pl

        class _TimeLimit(pl.Callback):
            def on_train_start(self, trainer, pl_module):
                self.start = time.monotonic()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if time.monotonic() - self.start > seconds:
                    trainer.should_stop = True

        return _TimeLimit()


@torch.no_grad()
def sample(pipe, hints, face_embeds, clip_pixels, steps: int, seed: int) -> torch.Tensor:
    from caphuman.conditions.identity import IdentityInputs

    identity = IdentityInputs(face_embeds[None], clip_pixels[None])
    out = []
    for index, hint in enumerate(hints):
        generator = torch.Generator().manual_seed(seed + index)
        image = pipe("a photo of a person", hint[None], identity=identity, num_inference_steps=steps, guidance_scale=1.0,
                     generator=generator, output_type="pt").images
        out.append(image * 2 - 1)
    return torch.cat(out)


def nearest_pose(images: torch.Tensor, templates: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    distances = torch.cdist(images.flatten(1), templates.flatten(1))
    return grid[distances.argmin(dim=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="training wall time")
    parser.add_argument("--train-poses", type=int, default=192)
    parser.add_argument("--test-poses", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3, help="higher than the published 1e-4: minutes, not days")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps when sampling")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)

    from skimage.data import astronaut

    from caphuman.commands.train import train
    from caphuman.config import CapHumanConfig
    from caphuman.head.builtin_prior import BuiltinHeadPrior
    from caphuman.head.renderer import MeshRenderer
    from caphuman.loading import load_adapter
    from caphuman.models.tiny import tiny_backbone
    from caphuman.pipeline import CapHumanPipeline
    from caphuman.schedulers import make_scheduler
    from caphuman.training.config import load_train_config

    prior = BuiltinHeadPrior()
    base = prior.reconstruct(astronaut())
    # The astronaut's head covers ~4% of her photo: render at 2.5x and cut a 64 px window
    # around the frontal head, so the head fills about half of the training frame.
    renderer = MeshRenderer(int(IMAGE_SIZE * 2.5))
    from caphuman.head.hint import render_hint

    frontal = render_hint(prior, base, renderer.height, renderer=renderer).mask[0, 0]
    rows, cols = torch.nonzero(frontal, as_tuple=True)
    centre_row, centre_col = int(rows.float().mean()), int(cols.float().mean())
    limit = renderer.height - IMAGE_SIZE
    window = (min(max(centre_row - IMAGE_SIZE // 2, 0), limit), min(max(centre_col - IMAGE_SIZE // 2, 0), limit))
    generator = torch.Generator().manual_seed(0)

    def random_poses(count: int) -> torch.Tensor:
        return (torch.rand(count, 2, generator=generator) * 2 - 1) * torch.tensor([YAW_RANGE, PITCH_RANGE])

    started = time.monotonic()
    train_poses, test_poses = random_poses(args.train_poses), random_poses(args.test_poses)
    yaws = torch.arange(-YAW_RANGE, YAW_RANGE + 0.1, GRID_STEP)
    pitches = torch.arange(-PITCH_RANGE, PITCH_RANGE + 0.1, GRID_STEP)
    grid = torch.cartesian_prod(yaws, pitches)
    hints, images, masks = render_targets(prior, base, train_poses, renderer, window)
    test_hints, test_images, _ = render_targets(prior, base, test_poses, renderer, window)
    _, grid_images, _ = render_targets(prior, base, grid, renderer, window)
    logger.info("Rendered %d poses in %.0f s (head covers %.0f%% of the frame)", len(train_poses) + len(test_poses) + len(grid),
                time.monotonic() - started, 100 * masks.mean())

    config = load_train_config("configs/tiny_train.yaml", [
        f"training.output_dir={tempfile.mkdtemp(prefix='learning_check_')}", "training.max_steps=1000000",
        f"training.optimizer.lr={args.lr}", f"training.data.batch_size={args.batch_size}", "training.ema.enabled=false",
        "training.validation.every_n_steps=0", "training.checkpoint_every=0", "training.log_every_n_steps=50",
    ])
    backbone = tiny_backbone(config.model.tiny)
    face_embeds = torch.nn.functional.normalize(torch.randn(1, 512, generator=generator), dim=-1)
    clip_pixels = torch.randn(1, 3, 32, 32, generator=generator)
    untrained = load_adapter(CapHumanConfig(model=config.model), backbone, config.training.weights_dir)

    vae = backbone.vae
    with torch.no_grad():
        def round_trip(x):
            return vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        templates = torch.cat([round_trip(chunk) for chunk in grid_images.split(32)])
        floor_estimates = nearest_pose(torch.cat([round_trip(c) for c in test_images.split(32)]), templates, grid)

    def pipeline(adapter):
        pipe = CapHumanPipeline(
            vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet,
            capface=adapter.capface.eval(), identity_encoder=adapter.identity_encoder.eval(),
            image_encoder=backbone.image_encoder, image_processor=backbone.image_processor,
            scheduler=make_scheduler("ddim", backbone.scheduler_config),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    untrained_images = sample(pipeline(untrained), test_hints, face_embeds[0], clip_pixels[0], args.steps, seed=100)

    train_started = time.monotonic()
    dataset = PoseRenders(hints, images, masks, face_embeds, clip_pixels)
    module = train(config, datasets=(dataset, collate, None), extra_callbacks=[TimeLimit(args.minutes * 60)], backbone=backbone,
                   command="benchmarks/learning_check.py")
    train_seconds = time.monotonic() - train_started
    trained_images = sample(pipeline(module.adapter), test_hints, face_embeds[0], clip_pixels[0], args.steps, seed=100)

    def errors(estimates: torch.Tensor) -> tuple[float, float]:
        difference = (estimates - test_poses).abs().mean(dim=0)
        return float(difference[0]), float(difference[1])

    chance = (grid[:, None, :] - test_poses[None]).abs().mean(dim=(0, 1))
    rows = {
        "untrained": errors(nearest_pose(untrained_images, templates, grid)),
        "trained": errors(nearest_pose(trained_images, templates, grid)),
        "readout floor (VAE round trip of the true target)": errors(floor_estimates),
        "chance (pose-blind guess over the grid)": (float(chance[0]), float(chance[1])),
    }
    distance = {
        "untrained": float((untrained_images - test_images).pow(2).mean()),
        "trained": float((trained_images - test_images).pow(2).mean()),
    }
    print(f"\nTrained {module.global_step} steps (batch {args.batch_size}, lr {args.lr}) in {train_seconds:.0f} s on CPU; "
          f"{args.test_poses} held-out poses, {args.steps} DDIM steps, no guidance.")
    print(f"{'model':52s} {'|yaw err| deg':>14s} {'|pitch err| deg':>16s}")
    for name, (yaw_error, pitch_error) in rows.items():
        print(f"{name:52s} {yaw_error:14.1f} {pitch_error:16.1f}")
    print(f"pixel MSE to the target render: untrained {distance['untrained']:.4f}, trained {distance['trained']:.4f}")


if __name__ == "__main__":
    main()
