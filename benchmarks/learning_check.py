"""Learning check: after a few CPU minutes of training, the tiny model's samples follow the
requested head pose measurably better than the untrained model's.

The real system trains CapFace against a PRETRAINED, frozen Stable Diffusion, which already
draws heads; CapFace only steers it. The tiny backbone is random, so the check first gives it
that property, then runs the published recipe on top:

- data: the built-in head prior reconstructs three public photos (skimage's astronaut and
  cameraman, matplotlib's grace_hopper.jpg); each head is framed at a fixed size in a 64 px frame,
  re-posed at random (yaw in [-40, 40], pitch in [-20, 20] degrees, roll 0), rendered (the
  9-channel hint) and its shaded render composited on a plain grey background (the image). Each
  identity's caption names it ("a photo of an astronaut", ...).
- stage 1a, the VAE: the tiny AutoencoderKL is trained as an autoencoder on the renders (L1 +
  MSE + a small KL term), then its ``scaling_factor`` is set to 1 / std of the latents, which is
  how SD's 0.18215 was chosen. Why not an identity-like VAE: the diffusers AutoencoderKL must
  downsample 8x to 4 channels (8 x 8 x 4 latents for 64 px), which no fixed map does losslessly;
  a trained autoencoder is what SD has and what the training/sampling code expects.
- stage 1b, the UNet: trained as a text-conditional epsilon-prediction diffusion model on the
  VAE latents (SD's noise schedule, 10% empty captions), so that on its own it draws a head of the
  named person at SOME pose, its pose set by the noise seed.
- stage 2, CapFace: backbone frozen; a fresh CapFace (copy of the trained UNet encoder, zero
  convolutions) + identity projections trained with the project's own loss
  (``CapHumanTrainingModule.compute_loss``: noise MSE + mask MSE, identity tokens from the
  reference's tiny CLIP features and tiny recogniser embedding) on (image, hint at its pose) pairs.
- measure: for held-out random poses, the untrained (zero-convolution) and trained CapFace sample
  with the same seeds (DDIM, no guidance). The pose of each generated image is read two ways:
  (1) the built-in head prior's ``reconstruct`` on the image upscaled to 256 px, when mediapipe
  detects a face in it (the detection rate is reported); (2) template matching: the nearest (L2)
  image among renders of the three identities on a 5-degree yaw/pitch grid, passed through the
  trained VAE (encode -> decode). Reported per readout: mean |yaw| and |pitch| error, the readout
  floor (the readout applied to the VAE round trip of the true render) and chance (a pose-blind
  guess: every grid pose equally likely for template matching).

Run: python benchmarks/learning_check.py        (about 8 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger("learning_check")

# Identity name -> caption. The photos are public domain / matplotlib sample data.
IDENTITIES = {
    "astronaut": "a photo of an astronaut",
    "grace_hopper": "a photo of an admiral",
    "cameraman": "a photo of a cameraman",
}
BACKGROUND = 0.5
# The head (mesh bounding box, frontal) spans this fraction of the frame's width.
HEAD_FRACTION = 0.75
DETECTION_SIZE = 256


@dataclass
class LearningCheckSettings:
    """Every knob of the check (defaults: the script's run)."""

    image_size: int = 64
    yaw_range: float = 40.0
    pitch_range: float = 20.0
    train_poses_per_identity: int = 200
    test_poses_per_identity: int = 8
    grid_step: float = 5.0
    # Steps per stage (about 60 s, 150 s and 180 s on 2 idle cores); counted in steps, not
    # seconds, so a run is reproducible whatever else the machine is doing.
    vae_steps: int = 700
    unet_steps: int = 2500
    capface_steps: int = 1600
    batch_size: int = 16
    vae_lr: float = 2e-3
    unet_lr: float = 1e-3
    # The published lr is 1e-4 for days of GPU time; minutes of CPU need a larger step.
    capface_lr: float = 1e-3
    sampling_steps: int = 20
    seed: int = 0
    threads: int = 2
    use_mediapipe: bool = True


@dataclass
class RenderSet:
    """Renders of heads at given poses (N items).

    Attributes:
        hints: (N, 9, S, S) normals, albedo, shaded render (0 off the head).
        images: (N, 3, S, S) shaded render on the grey background, in [-1, 1].
        masks: (N, 1, S, S) head masks in {0, 1}.
        poses: (N, 2) yaw, pitch in degrees.
        identity: (N,) long index into IDENTITIES.
    """

    hints: torch.Tensor
    images: torch.Tensor
    masks: torch.Tensor
    poses: torch.Tensor
    identity: torch.Tensor

    def __len__(self) -> int:
        return len(self.poses)


@dataclass
class PoseErrors:
    """Mean absolute pose errors (degrees) of one model under one readout."""

    yaw: float
    pitch: float
    detected: int = 0
    total: int = 0


@dataclass
class LearningCheckResult:
    """Everything the check measured."""

    template: dict[str, PoseErrors]
    mediapipe: dict[str, PoseErrors] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    losses: dict[str, tuple[float, float]] = field(default_factory=dict)
    # "untrained", "trained", "truth": (N, 3, S, S) in [-1, 1], for looking at.
    images: dict[str, torch.Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- data


def identity_photos() -> dict[str, np.ndarray]:
    """The three public photos as RGB uint8 arrays, keyed like IDENTITIES."""
    import matplotlib.cbook as cbook
    from PIL import Image
    from skimage import data

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.asarray(Image.open(handle).convert("RGB"))
    return {"astronaut": data.astronaut(), "grace_hopper": hopper, "cameraman": np.stack([data.camera()] * 3, axis=-1)}


def framed_heads(prior, photos: dict[str, np.ndarray]) -> list:
    """Reconstruct each photo's head; centre it and scale it to HEAD_FRACTION of the frame.

    Framing is fixed per identity so that pose is the only thing that varies between renders of
    one person (the real data's varying framing is not what this check is about)."""
    heads = []
    for name in IDENTITIES:
        params = prior.reconstruct(photos[name], source=name)
        params.rotation[:] = 0.0
        params.camera = torch.tensor([[1.0, 0.0, 0.0]])
        vertices = prior.mesh(params).vertices[0]
        low, high = vertices.min(dim=0).values, vertices.max(dim=0).values
        scale = 2.0 * HEAD_FRACTION / float((high - low)[:2].max())
        centre = (high + low) / 2
        params.camera = torch.tensor([[scale, -float(centre[0]) * scale, -float(centre[1]) * scale]])
        heads.append(params)
    return heads


def render_set(prior, heads: list, poses: torch.Tensor, identity: torch.Tensor, image_size: int) -> RenderSet:
    """Render heads[identity[i]] at poses[i] (yaw, pitch; roll 0)."""
    from caphuman.conditions.hint_layout import SHADED_CHANNELS
    from caphuman.head.hint import render_hint
    from caphuman.head.params import HeadParams
    from caphuman.head.renderer import MeshRenderer

    renderer = MeshRenderer(image_size)
    hints, masks = [], []
    for index in range(0, len(poses), 64):
        chunk, owners = poses[index : index + 64], identity[index : index + 64]
        fields = {}
        for name in ("shape", "expression", "jaw", "rotation", "camera", "albedo", "lighting"):
            fields[name] = torch.cat([getattr(heads[int(owner)], name) for owner in owners])
        params = HeadParams(**fields, backend=heads[0].backend)
        params.rotation[:, 0], params.rotation[:, 1], params.rotation[:, 2] = chunk[:, 0], chunk[:, 1], 0.0
        head = render_hint(prior, params, image_size, renderer=renderer)
        hints.append(head.hint)
        masks.append(head.mask)
    hints, masks = torch.cat(hints), torch.cat(masks)
    images = hints[:, SHADED_CHANNELS] * masks + BACKGROUND * (1 - masks)
    return RenderSet(hints=hints, images=images * 2 - 1, masks=masks, poses=poses.clone(), identity=identity.clone())


def random_poses(count: int, settings: LearningCheckSettings, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(count * identities, 2) uniform random yaw/pitch and the (count * identities,) identity index."""
    total = count * len(IDENTITIES)
    poses = (torch.rand(total, 2, generator=generator) * 2 - 1) * torch.tensor([settings.yaw_range, settings.pitch_range])
    return poses, torch.arange(len(IDENTITIES)).repeat_interleave(count)


def pose_grid(settings: LearningCheckSettings) -> torch.Tensor:
    """(G, 2) yaw/pitch grid over the sampled range."""
    yaws = torch.arange(-settings.yaw_range, settings.yaw_range + 1e-3, settings.grid_step)
    pitches = torch.arange(-settings.pitch_range, settings.pitch_range + 1e-3, settings.grid_step)
    return torch.cartesian_prod(yaws, pitches)


def identity_inputs(backbone, references: torch.Tensor, face_embedding_dim: int):
    """Per-identity (face_embeds (I, 1, G), clip_pixels (I, 1, 3, s, s)) of the frontal renders
    ``references`` (I, 3, S, S) in [-1, 1]: the reference is the face of the same person, as in
    the published training (its face crop of the same image)."""
    from caphuman.faces.tiny_recognizer import TinyFaceRecognizer

    crops = [((image.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy() for image in references]
    face_embeds = TinyFaceRecognizer(face_embedding_dim).embed(crops).float()
    clip_pixels = backbone.feature_extractor(images=crops, return_tensors="pt").pixel_values
    return face_embeds[:, None], clip_pixels[:, None]


# ------------------------------------------------------------------------------- stage 1: backbone


def pretrain_vae(vae, images: torch.Tensor, settings: LearningCheckSettings) -> tuple[int, float]:
    """Train the AutoencoderKL on ``images`` (N, 3, S, S) in [-1, 1] for settings.vae_steps,
    then set its scaling factor to 1 / std of the latents. Returns (steps, last loss)."""
    generator = torch.Generator().manual_seed(settings.seed + 11)
    vae.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    loss_value = float("nan")
    for _ in range(settings.vae_steps):
        batch = images[torch.randint(len(images), (settings.batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        # A small KL weight, as SD's VAE: the latent stays close to deterministic and detailed.
        loss = (reconstruction - batch).abs().mean() + F.mse_loss(reconstruction, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
    vae.requires_grad_(False).eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(64)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    return settings.vae_steps, loss_value


def pretrain_unet(backbone, renders: RenderSet, settings: LearningCheckSettings) -> tuple[int, float]:
    """Train the UNet as a text-conditional diffusion model on the VAE latents of the renders.
    Returns (steps, mean noise loss of the last 50 steps)."""
    from diffusers import DDPMScheduler

    from caphuman.conditions.text import encode_prompts

    generator = torch.Generator().manual_seed(settings.seed + 12)
    scheduler = DDPMScheduler.from_config(dict(backbone.scheduler_config))
    vae, unet = backbone.vae, backbone.unet
    with torch.no_grad():
        posteriors = [vae.encode(chunk).latent_dist for chunk in renders.images.split(64)]
        means = torch.cat([p.mean for p in posteriors])
        stds = torch.cat([p.std for p in posteriors])
        captions = list(IDENTITIES.values()) + [""]
        caption_embeds = encode_prompts(captions, backbone.tokenizer, backbone.text_encoder)
    scaling = vae.config.scaling_factor
    unet.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=0.0)
    recent: list[float] = []
    for _ in range(settings.unet_steps):
        index = torch.randint(len(renders), (settings.batch_size,), generator=generator)
        latents = (means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)) * scaling
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (settings.batch_size,), generator=generator)
        # 10% empty captions, as SD was trained, so the backbone also has an unconditional mode.
        caption = torch.where(torch.rand(settings.batch_size, generator=generator) < 0.1, len(IDENTITIES), renders.identity[index])
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, encoder_hidden_states=caption_embeds[caption]).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent = (recent + [float(loss.detach())])[-50:]
    unet.requires_grad_(False).eval()
    return settings.unet_steps, float(np.mean(recent))


# ------------------------------------------------------------------------------ stage 2: CapFace


def train_capface(backbone, adapter, renders: RenderSet, face_embeds, clip_pixels, settings: LearningCheckSettings) -> tuple[int, float, float]:
    """The published recipe on the frozen backbone, with the project's loss
    (CapHumanTrainingModule.compute_loss, the same code `caphuman train` runs).
    Returns (steps, first-50 mean noise loss, last-50 mean noise loss)."""
    from caphuman.training.config import load_train_config
    from caphuman.training.module import CapHumanTrainingModule, step_generator

    config = load_train_config(
        "configs/tiny_train.yaml",
        [
            f"training.output_dir={tempfile.mkdtemp(prefix='learning_check_')}",
            f"training.optimizer.lr={settings.capface_lr}",
            f"training.data.batch_size={settings.batch_size}",
            f"training.seed={settings.seed}",
        ],
    )
    module = CapHumanTrainingModule(config, backbone, adapter)
    module.train()
    optimizer = module.configure_optimizers()
    dropout = config.training.data.dropout
    generator = torch.Generator().manual_seed(settings.seed + 13)
    captions = list(IDENTITIES.values())
    losses: list[float] = []
    step = 0
    for step in range(settings.capface_steps):
        index = torch.randint(len(renders), (settings.batch_size,), generator=generator)
        owners = renders.identity[index]
        drop_text = torch.rand(settings.batch_size, generator=generator) < dropout.text
        batch = {
            "pixel_values": renders.images[index],
            "clip_pixel_values": clip_pixels[owners],
            "face_embeds": face_embeds[owners],
            "face_mask": renders.masks[index],
            "hint": renders.hints[index],
            "caption": ["" if drop else captions[int(owner)] for owner, drop in zip(owners, drop_text, strict=True)],
            "drop_identity": torch.rand(settings.batch_size, generator=generator) < dropout.identity,
            "drop_hint": torch.rand(settings.batch_size, generator=generator) < dropout.hint,
        }
        terms = module.compute_loss(batch, step_generator(settings.seed, step))
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        losses.append(float(terms.noise))
    adapter.eval()
    return step + 1, float(np.mean(losses[:50])), float(np.mean(losses[-50:]))


# --------------------------------------------------------------------------------- measurement


@torch.no_grad()
def generate(backbone, adapter, renders: RenderSet, face_embeds, clip_pixels, settings: LearningCheckSettings) -> torch.Tensor:
    """(N, 3, S, S) images in [-1, 1], one per test render, seeded per item (same seeds for every model)."""
    from caphuman.conditions.identity import IdentityInputs
    from caphuman.pipeline import CapHumanPipeline
    from caphuman.schedulers import make_scheduler

    pipe = CapHumanPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=backbone.unet,
        capface=adapter.capface,
        identity_encoder=adapter.identity_encoder,
        image_encoder=backbone.image_encoder,
        feature_extractor=backbone.feature_extractor,
        scheduler=make_scheduler("ddim", backbone.scheduler_config),
    )
    pipe.set_progress_bar_config(disable=True)
    captions = list(IDENTITIES.values())
    generators = [torch.Generator().manual_seed(settings.seed + 1000 + index) for index in range(len(renders))]
    identity = IdentityInputs(face_embeds[renders.identity], clip_pixels[renders.identity])
    images = pipe(
        [captions[int(owner)] for owner in renders.identity],
        renders.hints,
        identity=identity,
        num_inference_steps=settings.sampling_steps,
        guidance_scale=1.0,
        generator=generators,
        output_type="pt",
    ).images
    return images * 2 - 1


@torch.no_grad()
def vae_round_trip(vae, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.decode(vae.encode(chunk).latent_dist.mean).sample.clamp(-1, 1) for chunk in images.split(64)])


def template_poses(images: torch.Tensor, templates: torch.Tensor, template_poses: torch.Tensor) -> torch.Tensor:
    """(N, 2) pose of the nearest (L2) template for each image (any identity's)."""
    distances = torch.cdist(images.flatten(1), templates.flatten(1))
    return template_poses[distances.argmin(dim=1)]


def mediapipe_poses(prior, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) yaw/pitch from the built-in prior's reconstruct on each image upscaled to
    DETECTION_SIZE, and the (N,) bool of where mediapipe found a face (NaN poses elsewhere)."""
    from caphuman.errors import InputImageError

    poses = torch.full((len(images), 2), float("nan"))
    upscaled = F.interpolate((images + 1) / 2, size=DETECTION_SIZE, mode="bicubic", align_corners=False).clamp(0, 1)
    for index, image in enumerate(upscaled):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        try:
            params = prior.reconstruct(pixels, source=f"generated image {index}")
        except InputImageError:
            continue
        poses[index] = params.rotation[0, :2]
    return poses, ~poses[:, 0].isnan()


def pose_errors(estimates: torch.Tensor, truth: torch.Tensor) -> PoseErrors:
    found = ~estimates[:, 0].isnan()
    if not found.any():
        return PoseErrors(float("nan"), float("nan"), 0, len(truth))
    difference = (estimates[found] - truth[found]).abs().mean(dim=0)
    return PoseErrors(float(difference[0]), float(difference[1]), int(found.sum()), len(truth))


def run_learning_check(settings: LearningCheckSettings) -> LearningCheckResult:
    """Build the data, pretrain the backbone, train CapFace, and measure (see the module docstring)."""
    torch.set_num_threads(settings.threads)
    # Adam's second moments of tiny gradients underflow to denormal floats, which are ~100x
    # slower on x86 CPUs (seen: a 50-step stretch taking 130 s instead of 2 s); flush them to zero.
    torch.set_flush_denormal(True)
    try:
        return _run(settings)
    finally:
        torch.set_flush_denormal(False)


def _run(settings: LearningCheckSettings) -> LearningCheckResult:
    from caphuman.build import load_adapter
    from caphuman.config import CapHumanConfig
    from caphuman.head.builtin.builtin_prior import BuiltinHeadPrior
    from caphuman.models.tiny import tiny_backbone
    from caphuman.training.config import load_train_config

    torch.manual_seed(settings.seed)
    result = LearningCheckResult(template={})
    clock = time.monotonic()

    prior = BuiltinHeadPrior()
    heads = framed_heads(prior, identity_photos())
    generator = torch.Generator().manual_seed(settings.seed)
    train_poses, train_owner = random_poses(settings.train_poses_per_identity, settings, generator)
    test_poses, test_owner = random_poses(settings.test_poses_per_identity, settings, generator)
    grid = pose_grid(settings)
    grid_owner = torch.arange(len(IDENTITIES)).repeat_interleave(len(grid))
    train = render_set(prior, heads, train_poses, train_owner, settings.image_size)
    test = render_set(prior, heads, test_poses, test_owner, settings.image_size)
    templates = render_set(prior, heads, grid.repeat(len(IDENTITIES), 1), grid_owner, settings.image_size)
    frontal = render_set(prior, heads, torch.zeros(len(IDENTITIES), 2), torch.arange(len(IDENTITIES)), settings.image_size)
    result.seconds["render"] = time.monotonic() - clock
    logger.info("Rendered %d training, %d test, %d template poses in %.0f s", len(train), len(test), len(templates), result.seconds["render"])

    config = load_train_config("configs/tiny_train.yaml", [])
    backbone = tiny_backbone(config.model.tiny)

    clock = time.monotonic()
    steps, loss = pretrain_vae(backbone.vae, train.images, settings)
    result.seconds["stage 1a: VAE"], result.steps["stage 1a: VAE"], result.losses["stage 1a: VAE"] = time.monotonic() - clock, steps, (loss, loss)
    logger.info("VAE: %d steps, last loss %.4f, scaling factor %.3f", steps, loss, backbone.vae.config.scaling_factor)

    clock = time.monotonic()
    steps, loss = pretrain_unet(backbone, train, settings)
    result.seconds["stage 1b: UNet"], result.steps["stage 1b: UNet"], result.losses["stage 1b: UNet"] = time.monotonic() - clock, steps, (loss, loss)
    logger.info("UNet: %d steps, noise loss (last 50) %.4f", steps, loss)

    face_embeds, clip_pixels = identity_inputs(backbone, frontal.images, config.model.face_embedding_dim)
    untrained = load_adapter(CapHumanConfig(model=config.model), backbone, config.training.weights_dir)
    untrained_images = generate(backbone, untrained, test, face_embeds, clip_pixels, settings)

    clock = time.monotonic()
    adapter = load_adapter(CapHumanConfig(model=config.model), backbone, config.training.weights_dir)
    steps, first, last = train_capface(backbone, adapter, train, face_embeds, clip_pixels, settings)
    result.seconds["stage 2: CapFace"], result.steps["stage 2: CapFace"], result.losses["stage 2: CapFace"] = (
        time.monotonic() - clock,
        steps,
        (first, last),
    )
    logger.info("CapFace: %d steps, noise loss %.4f (first 50) -> %.4f (last 50)", steps, first, last)
    trained_images = generate(backbone, adapter, test, face_embeds, clip_pixels, settings)

    clock = time.monotonic()
    round_trip_templates = vae_round_trip(backbone.vae, templates.images)
    round_trip_truth = vae_round_trip(backbone.vae, test.images)
    template_pose_list = templates.poses
    chance = (grid[:, None, :] - test.poses[None]).abs().mean(dim=(0, 1))
    result.template = {
        "untrained": pose_errors(template_poses(untrained_images, round_trip_templates, template_pose_list), test.poses),
        "trained": pose_errors(template_poses(trained_images, round_trip_templates, template_pose_list), test.poses),
        "floor": pose_errors(template_poses(round_trip_truth, round_trip_templates, template_pose_list), test.poses),
        "chance": PoseErrors(float(chance[0]), float(chance[1]), len(test), len(test)),
    }
    if settings.use_mediapipe:
        for name, images in (("untrained", untrained_images), ("trained", trained_images), ("floor", round_trip_truth), ("renders", test.images)):
            estimates, _ = mediapipe_poses(prior, images)
            result.mediapipe[name] = pose_errors(estimates, test.poses)
    result.seconds["measure"] = time.monotonic() - clock
    result.images = {"untrained": untrained_images, "trained": trained_images, "truth": test.images}
    return result


def report(result: LearningCheckResult, settings: LearningCheckSettings) -> str:
    lines = []
    for stage, seconds in result.seconds.items():
        extra = ""
        if stage in result.steps:
            first, last = result.losses[stage]
            extra = (
                f": {result.steps[stage]} steps, loss {first:.4f} -> {last:.4f}"
                if first != last
                else f": {result.steps[stage]} steps, loss {last:.4f}"
            )
        lines.append(f"{stage:18s} {seconds:6.0f} s{extra}")
    count = next(iter(result.template.values())).total
    lines.append(f"\n{count} held-out poses, DDIM {settings.sampling_steps} steps, guidance 1.0, same seeds for both models.")
    lines.append(f"{'readout / model':44s} {'|yaw err|':>10s} {'|pitch err|':>12s} {'detected':>9s}")
    for name, errors in result.template.items():
        lines.append(f"{'template matching / ' + name:44s} {errors.yaw:10.1f} {errors.pitch:12.1f} {'':>9s}")
    for name, errors in result.mediapipe.items():
        lines.append(f"{'prior.reconstruct (mediapipe) / ' + name:44s} {errors.yaw:10.1f} {errors.pitch:12.1f} {errors.detected:4d}/{errors.total}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = LearningCheckSettings()
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps)
    parser.add_argument("--capface-steps", type=int, default=defaults.capface_steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--save-grid", default=None, help="write untrained / trained / target images to this PNG")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = LearningCheckSettings(
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        capface_steps=args.capface_steps,
        seed=args.seed,
        threads=args.threads,
    )
    started = time.monotonic()
    result = run_learning_check(settings)
    if args.save_grid:
        from torchvision.utils import save_image

        images = result.images
        rows = torch.cat([images["untrained"], images["trained"], images["truth"]])
        save_image((rows + 1) / 2, args.save_grid, nrow=len(images["truth"]))
    print(report(result, settings))
    print(f"total wall time {time.monotonic() - started:.0f} s on {settings.threads} threads")


if __name__ == "__main__":
    main()
