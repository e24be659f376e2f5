"""The CapHuman training step as a LightningModule, and the resumable batch stream that feeds it.

Per batch (published recipe, with the sampler's own condition functions from caphuman.conditions):

1. latents = VAE posterior SAMPLE of ``pixel_values`` x scaling factor (ldm samples the posterior,
   it does not take its mean);
2. timesteps ~ U{0, ..., T-1} and noise ~ N(0, I); noisy = DDPMScheduler.add_noise(latents, noise, t);
3. text embeddings of the captions (``encode_prompts``); identity tokens from the precomputed face
   embedding + CLIP pixels (``identity_tokens``), zeroed where ``drop_identity`` (the published
   unconditional identity); the hint zeroed where ``drop_hint``;
4. CapFace(noisy, t, tokens, hint) -> residuals gated by the detached predicted mask (> 0.5), as
   the published model also does while training -> frozen UNet with the text -> noise prediction;
5. loss = MSE(noise_pred, noise) + mask_loss_weight x MSE(face_mask_pred, target), over every
   sample of the batch as the published step does. The target is the published one: the face
   region of the parsing labels (0/1 integers) resized to the latent resolution by torchvision
   0.14.1's tensor resize, i.e. a plain bilinear sample rounded back to 0/1
   (:func:`face_mask_target`).

Every random draw of a step comes from CPU generators, one per sample, seeded by (seed,
global_step, the sample's position in the global batch), each drawing in the order: posterior
sample, timestep, noise. No RNG state needs restoring on resume, CPU and GPU runs draw the same
numbers, and a sample's draws do not depend on how the global batch is split over processes:
sample i of rank r is position i * world_size + r, the position the dataset's record mode deals
it to (every world_size-th record to each rank), so W processes with batch B compute the
gradients of one process with batch W * B on the same records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch.utils.data import DataLoader, IterableDataset

from caphuman.build import enable_xformers
from caphuman.conditions.identity import IdentityInputs, identity_tokens
from caphuman.conditions.text import encode_prompts
from caphuman.config import config_to_dict
from caphuman.errors import CapHumanError
from caphuman.models.adapter import CapHumanAdapter
from caphuman.models.backbone import Backbone
from caphuman.models.capface import resize_face_mask
from caphuman.training.config import TrainConfig

logger = logging.getLogger(__name__)

FROZEN_MODULES = ("unet", "vae", "text_encoder", "image_encoder")
ADAPTER_PREFIX = "adapter."
CHECKPOINT_DATA_KEY = "caphuman_data_layout"
CHECKPOINT_ADAPTER_CONFIG_KEY = "caphuman_adapter_config"


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator of one training step: a pure function of (seed, step, stream)."""
    # SeedSequence mixes the three integers so neighbouring steps get unrelated streams.
    state = np.random.SeedSequence([int(seed), int(step), int(stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def face_mask_target(face_region: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The mask head's training target, as the published training step builds it.

    The official step turns the parsing labels into an integer 0/1 face region (classes 0, 7, 8, 9
    and 14-18 off; our records store that region) and resizes it with torchvision's ``F.resize``
    to the latent size. On an integer tensor that resize samples bilinearly in float32 and rounds
    back (half to even), so the target stays 0/1: at 512 -> 64 a cell is 1 when at least three of
    the four pixels around its centre are face.

    Args:
        face_region: (B, 1, S, S) face region in {0, 1} (any dtype).
        size: (h, w) latent size.
    Returns:
        (B, 1, h, w) float32 in {0, 1}.
    """
    return resize_face_mask(face_region.round().to(torch.uint8), size).float()


def sample_generators(seed: int, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[torch.Generator]:
    """One generator per sample of rank ``rank``'s batch, by the sample's global batch position
    (see the module docstring)."""
    return [step_generator(seed, step, index * world_size + rank) for index in range(batch_size)]


@dataclass
class LossTerms:
    """One step's loss: ``total = noise + mask_loss_weight * mask`` (scalars, float32)."""

    total: torch.Tensor
    noise: torch.Tensor
    mask: torch.Tensor


def check_endless_dataset(dataset: IterableDataset) -> None:
    """Raise TypeError unless ``dataset`` can feed an exactly resumable training run.

    That needs an endless dataset (``repeat`` true) with ``skip_batches(num_batches,
    batch_size)``, such as :class:`caphuman.data.dataset.CapHumanDataset` with ``repeat=True``:
    its order and dropout are functions of (seed, epoch), and because no DataLoader worker ever
    runs out of data, its skip is exact for any number of workers (near the end of a finite
    epoch it would not be: the DataLoader's order then depends on which worker ran out first).
    """
    if not (getattr(dataset, "repeat", False) and callable(getattr(dataset, "skip_batches", None))):
        raise TypeError(
            f"The training dataset ({type(dataset).__name__}) must be endless (repeat=True) with skip_batches(num_batches, "
            "batch_size), as caphuman.data.dataset.CapHumanDataset(repeat=True) is, so that resuming is exact."
        )


@dataclass
class StreamLayout:
    """What decides which batch comes when: a resume is exact only with the same layout."""

    batch_size: int
    num_workers: int
    world_size: int

    def differences(self, other: StreamLayout) -> list[str]:
        return [
            f"{name} {getattr(other, name)} -> {getattr(self, name)}"
            for name in ("batch_size", "num_workers", "world_size")
            if getattr(self, name) != getattr(other, name)
        ]


class ResumableBatches:
    """The endless stream of collated training batches, which starts at any step without reading
    the batches before it.

    The dataset moves from epoch to epoch by itself (see :func:`check_endless_dataset`), so one
    DataLoader serves the whole run. On (re)start the stream asks the dataset to skip the
    ``start_batch()`` batches already trained on (``dataset.skip_batches``), which reads nothing
    and needs no data state in the checkpoint.

    Args:
        dataset: endless training IterableDataset (it shards itself by DataLoader worker and rank).
        collate_fn: list of samples -> batch dict.
        batch_size, num_workers: per device.
        start_batch: returns how many batches were already trained on (the global step).
        distributed: returns (rank, world_size), given to ``dataset.set_distributed`` when the
            dataset has it (None: the dataset finds them itself).
    Raises:
        TypeError: the dataset is not endless or has no ``skip_batches``.
    """

    def __init__(
        self,
        dataset: IterableDataset,
        collate_fn: Callable[[list[dict]], dict],
        batch_size: int,
        num_workers: int,
        start_batch: Callable[[], int] = lambda: 0,
        distributed: Callable[[], tuple[int, int]] | None = None,
    ):
        check_endless_dataset(dataset)
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.start_batch = start_batch
        self.distributed = distributed
        self._active: Iterator[dict] | None = None

    def layout(self) -> StreamLayout:
        world_size = self.distributed()[1] if self.distributed is not None else 1
        return StreamLayout(self.batch_size, self.num_workers, world_size)

    def __iter__(self) -> Iterator[dict]:
        self.close()
        self._active = self._batches()
        return self._active

    def close(self) -> None:
        """End the running stream, which stops its DataLoader workers (an endless stream is never
        exhausted, so without this they would live as long as the trainer that holds it)."""
        active, self._active = self._active, None
        if active is not None:
            active.close()

    def _batches(self) -> Iterator[dict]:
        if self.distributed is not None and hasattr(self.dataset, "set_distributed"):
            self.dataset.set_distributed(*self.distributed())
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(0)
        start = int(self.start_batch())
        # Called at step 0 too: it clears a skip left from an earlier iteration.
        self.dataset.skip_batches(start, self.batch_size)
        if start:
            logger.info("Resuming the data stream after %d batches of %d.", start, self.batch_size)
        # Workers copy the dataset when this iterator starts, with its epoch and skip; persistent
        # workers would keep stale copies.
        yield from DataLoader(
            self.dataset, batch_size=self.batch_size, collate_fn=self.collate_fn, num_workers=self.num_workers, persistent_workers=False
        )


class CapHumanTrainingModule(pl.LightningModule):
    """Trains CapFace + the identity projections against the frozen SD backbone.

    Args:
        config: the run's :class:`TrainConfig`.
        backbone: frozen UNet, VAE, text encoder, tokenizer, CLIP vision, noise schedule.
        adapter: the trainable CapHumanAdapter (fresh from the UNet, or loaded to fine-tune).
        batches: the training batch stream (built by the train command); None for loss-only use.
    """

    def __init__(self, config: TrainConfig, backbone: Backbone, adapter: CapHumanAdapter, batches: ResumableBatches | None = None):
        super().__init__()
        self.config = config
        self.save_hyperparameters({"config": config_to_dict(config)})
        self.unet = backbone.unet
        self.vae = backbone.vae
        self.text_encoder = backbone.text_encoder
        self.image_encoder = backbone.image_encoder
        self.tokenizer = backbone.tokenizer
        self.feature_extractor = backbone.feature_extractor
        self.scheduler_config = dict(backbone.scheduler_config)
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        self.adapter = adapter
        self.batches = batches
        if batches is not None:
            # Read when the stream starts, i.e. after Lightning restored a checkpoint's step.
            batches.start_batch = lambda: self.global_step
            batches.distributed = lambda: (self.global_rank, self.trainer.world_size)
        for name in FROZEN_MODULES:
            getattr(self, name).requires_grad_(False).eval()
        self.adapter.requires_grad_(True)
        # Frozen weights are rebuilt from their own files, never stored in training checkpoints.
        self.strict_loading = False
        if config.training.gradient_checkpointing:
            self.adapter.capface.enable_gradient_checkpointing()
            # Gradients flow back through the frozen UNet to CapFace's residuals, so its
            # activations are kept too; checkpointing it saves most of the memory.
            self.unet.enable_gradient_checkpointing()

    # ---- modes and devices ----------------------------------------------------------------
    def train(self, mode: bool = True) -> CapHumanTrainingModule:
        """Lightning switches every submodule to train mode; the frozen backbone stays in eval."""
        super().train(mode)
        for name in FROZEN_MODULES:
            getattr(self, name).eval()
        return self

    def setup(self, stage: str) -> None:
        self._configure_attention()
        self._cast_frozen_modules()

    def _configure_attention(self) -> None:
        if self.config.training.attention == "xformers":
            enable_xformers([self.unet, self.adapter.capface], self.device)

    def _cast_frozen_modules(self) -> None:
        """Under mixed precision on a GPU, keep the frozen backbone in half precision (it never
        updates, so it needs no fp32 master copy); the trained adapter stays fp32."""
        precision = self.config.training.precision
        if precision == "32-true" or self.device.type != "cuda":
            return
        dtype = torch.float16 if precision == "16-mixed" else torch.bfloat16
        for name in FROZEN_MODULES:
            getattr(self, name).to(dtype=dtype)

    # ---- the loss ---------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any], generator: torch.Generator | list[torch.Generator]) -> LossTerms:
        """The training loss of one collated batch (see the module docstring).

        Args:
            batch: ``pixel_values`` (B, 3, S, S) in [-1, 1]; ``clip_pixel_values`` (B, 1, 3, s, s);
                ``face_embeds`` (B, 1, G); ``face_mask`` (B, 1, S, S) in {0, 1}; ``hint`` (B, 9, S, S);
                ``caption`` list of B str; ``drop_identity``/``drop_hint`` (B,) bool.
            generator: CPU generator for the posterior sample, timesteps and noise, in that order;
                or one generator per sample, each drawing that sample's three in that order.
        """
        device = self.device
        pixel_values = batch["pixel_values"].to(device)
        batch_size = pixel_values.shape[0]
        with torch.no_grad():
            posterior = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist
            latents = posterior.sample(generator=generator).float() * self.vae.config.scaling_factor
            steps = self.noise_scheduler.config.num_train_timesteps
            if isinstance(generator, list):
                timesteps = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generator]).to(device)
                noise = torch.cat([torch.randn((1, *latents.shape[1:]), generator=g, dtype=torch.float32) for g in generator]).to(device)
            else:
                timesteps = torch.randint(0, steps, (batch_size,), generator=generator).to(device)
                noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device)
            noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
            text_embeds = encode_prompts(list(batch["caption"]), self.tokenizer, self.text_encoder)

        identity = IdentityInputs(batch["face_embeds"].to(device).float(), batch["clip_pixel_values"].to(device))
        tokens = identity_tokens(identity, self.image_encoder, self.adapter.identity_encoder)
        keep_identity = (~torch.as_tensor(batch["drop_identity"], device=device).bool()).to(tokens.dtype)
        tokens = tokens * keep_identity[:, None, None]
        keep_hint = ~torch.as_tensor(batch["drop_hint"], device=device).bool()
        hint = batch["hint"].to(device).float() * keep_hint[:, None, None, None].float()

        capface_out = self.adapter.capface(noisy_latents, timesteps, tokens, hint)
        down, mid = capface_out.gated_residuals(1.0, mask_gating=True)
        unet_dtype = self.unet.dtype
        noise_pred = self.unet(
            noisy_latents.to(unet_dtype),
            timesteps,
            encoder_hidden_states=text_embeds.to(unet_dtype),
            down_block_additional_residuals=[residual.to(unet_dtype) for residual in down],
            mid_block_additional_residual=mid.to(unet_dtype),
            return_dict=False,
        )[0]
        noise_loss = F.mse_loss(noise_pred.float(), noise)

        predicted_mask = capface_out.face_mask.float()
        target_mask = face_mask_target(batch["face_mask"].to(device), tuple(predicted_mask.shape[-2:]))
        mask_loss = ((predicted_mask - target_mask) ** 2).mean()
        total = noise_loss + self.config.training.mask_loss_weight * mask_loss
        return LossTerms(total=total, noise=noise_loss.detach(), mask=mask_loss.detach())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        batch_size = batch["pixel_values"].shape[0]
        world_size = self.trainer.world_size if self._trainer is not None else 1
        generators = sample_generators(self.config.training.seed, self.global_step, batch_size, self.global_rank, world_size)
        terms = self.compute_loss(batch, generators)
        self.log("train/loss", terms.total.detach(), prog_bar=True, batch_size=batch_size)
        self.log("train/noise_loss", terms.noise, batch_size=batch_size)
        self.log("train/mask_loss", terms.mask, batch_size=batch_size)
        return {"loss": terms.total, "noise_loss": terms.noise, "mask_loss": terms.mask}

    # ---- optimisation ------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [parameter for parameter in self.adapter.parameters() if parameter.requires_grad]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        options = self.config.training.optimizer
        return torch.optim.AdamW(
            self.trainable_parameters(), lr=options.lr, betas=tuple(options.betas), weight_decay=options.weight_decay, eps=options.eps
        )

    def train_dataloader(self) -> ResumableBatches:
        if self.batches is None:
            raise CapHumanError("This training module was built without a dataset.")
        return self.batches

    # ---- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trained adapter (the frozen backbone comes from its own files), the data
        stream's layout (to warn when a resume changes it) and the adapter's architecture, so
        that a checkpoint exports alone. The data position is the global step itself."""
        checkpoint["state_dict"] = {key: value for key, value in checkpoint["state_dict"].items() if key.startswith(ADAPTER_PREFIX)}
        if self.batches is not None:
            checkpoint[CHECKPOINT_DATA_KEY] = asdict(self.batches.layout())
        checkpoint[CHECKPOINT_ADAPTER_CONFIG_KEY] = {
            "capface": dict(self.adapter.capface.config),
            "identity_encoder": dict(self.adapter.identity_encoder.config),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CHECKPOINT_DATA_KEY)
        if self.batches is None or saved is None:
            return
        changed = self.batches.layout().differences(StreamLayout(**saved))
        if changed:
            logger.warning(
                "Resuming with a different data layout (%s): training continues, but not with the batches an uninterrupted run would have seen.",
                ", ".join(changed),
            )


__all__ = ["CapHumanTrainingModule", "LossTerms", "ResumableBatches", "StreamLayout", "check_endless_dataset", "sample_generators", "step_generator"]
