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
5. loss = MSE(noise_pred, noise) + mask_loss_weight x MSE(face_mask_pred, face_mask resized by
   area averaging to the latent resolution); the mask term skips hint-dropped samples (the mask
   head reads only the hint, so there is nothing to locate without it).

Every random draw of a step comes from one CPU generator seeded by (seed, global_step, rank), in
the order: posterior sample, timesteps, noise. No RNG state needs restoring on resume, and CPU and
GPU runs draw the same numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch.utils.data import DataLoader, IterableDataset

from caphuman.conditions.identity import IdentityInputs, identity_tokens
from caphuman.conditions.text import encode_prompts
from caphuman.config import config_to_dict
from caphuman.errors import CapHumanError
from caphuman.models.adapter import CapHumanAdapter
from caphuman.models.backbone import Backbone
from caphuman.training.config import TrainConfig

logger = logging.getLogger(__name__)

FROZEN_MODULES = ("unet", "vae", "text_encoder", "image_encoder")
ADAPTER_PREFIX = "adapter."
CHECKPOINT_DATA_KEY = "caphuman_data_position"
CHECKPOINT_ADAPTER_CONFIG_KEY = "caphuman_adapter_config"


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of one training step: a pure function of (seed, step, rank)."""
    # SeedSequence mixes the three integers so neighbouring steps get unrelated streams.
    state = np.random.SeedSequence([int(seed), int(step), int(rank)]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass
class LossTerms:
    """One step's loss: ``total = noise + mask_loss_weight * mask`` (scalars, float32)."""

    total: torch.Tensor
    noise: torch.Tensor
    mask: torch.Tensor


class ResumableBatches:
    """An endless stream of collated batches over epochs of a deterministic dataset.

    Epoch ``e`` is ``dataset.set_epoch(e)`` then one pass through a DataLoader (the dataset shuffles
    per (seed, epoch) and shards itself by worker and rank). On (re)start the stream skips the
    batches already trained on, ``start_batch()`` of them: whole epochs whose length is known are
    skipped without reading; the rest of the current epoch is read and dropped. With the same
    batch size and worker count, a resumed run sees exactly the batches an uninterrupted run sees.
    """

    def __init__(
        self,
        dataset: IterableDataset,
        collate_fn: Callable[[list[dict]], dict],
        batch_size: int,
        num_workers: int,
        start_batch: Callable[[], int] = lambda: 0,
    ):
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.start_batch = start_batch
        # epoch -> number of batches it gave, filled as epochs complete; saved in checkpoints.
        self.epoch_lengths: dict[int, int] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_lengths": {int(k): int(v) for k, v in self.epoch_lengths.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch_lengths = {int(k): int(v) for k, v in state.get("epoch_lengths", {}).items()}

    def _epoch_batches(self, epoch: int) -> Iterator[dict]:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            drop_last=True,
            persistent_workers=False,
        )
        return iter(loader)

    def __iter__(self) -> Iterator[dict]:
        to_skip = int(self.start_batch())
        epoch = 0
        while epoch in self.epoch_lengths and to_skip >= self.epoch_lengths[epoch]:
            to_skip -= self.epoch_lengths[epoch]
            epoch += 1
        if to_skip or epoch:
            logger.info("Resuming the data stream at epoch %d, batch %d.", epoch, to_skip)
        while True:
            count = 0
            for batch in self._epoch_batches(epoch):
                count += 1
                if count <= to_skip:
                    continue
                yield batch
            if count == 0:
                raise CapHumanError(
                    f"The training dataset gave no full batch of {self.batch_size} in epoch {epoch}; "
                    "add records or lower training.data.batch_size."
                )
            self.epoch_lengths[epoch] = count
            to_skip = 0
            epoch += 1


class CapHumanTrainingModule(pl.LightningModule):
    """Trains CapFace + the identity projections against the frozen SD backbone.

    Args:
        config: the run's :class:`TrainConfig`.
        backbone: frozen UNet, VAE, text encoder, tokenizer, CLIP vision, noise schedule.
        adapter: the trainable CapHumanAdapter (fresh from the UNet, or loaded to fine-tune).
        batches: the training batch stream (built by the train command); None for loss-only use.
    """

    def __init__(
        self, config: TrainConfig, backbone: Backbone, adapter: CapHumanAdapter, batches: ResumableBatches | None = None
    ):
        super().__init__()
        self.config = config
        self.save_hyperparameters({"config": config_to_dict(config)})
        self.unet = backbone.unet
        self.vae = backbone.vae
        self.text_encoder = backbone.text_encoder
        self.image_encoder = backbone.image_encoder
        self.tokenizer = backbone.tokenizer
        self.image_processor = backbone.image_processor
        self.scheduler_config = dict(backbone.scheduler_config)
        self.noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        self.adapter = adapter
        self.batches = batches
        if batches is not None:
            batches.start_batch = lambda: self.global_step
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
    def train(self, mode: bool = True) -> "CapHumanTrainingModule":
        """Lightning switches every submodule to train mode; the frozen backbone stays in eval."""
        super().train(mode)
        for name in FROZEN_MODULES:
            getattr(self, name).eval()
        return self

    def setup(self, stage: str) -> None:
        self._configure_attention()
        self._cast_frozen_modules()

    def _configure_attention(self) -> None:
        if self.config.training.attention != "xformers":
            return
        if self.device.type != "cuda":
            logger.warning("xformers attention needs CUDA; training uses PyTorch SDPA on %s.", self.device)
            return
        try:
            import xformers  # noqa: F401
        except ImportError:
            logger.warning("xformers is not installed (pip install -e '.[cuda]'); training uses PyTorch SDPA.")
            return
        self.unet.enable_xformers_memory_efficient_attention()
        self.adapter.capface.enable_xformers_memory_efficient_attention()

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
    def compute_loss(self, batch: dict[str, Any], generator: torch.Generator) -> LossTerms:
        """The training loss of one collated batch (see the module docstring).

        Args:
            batch: ``pixel_values`` (B, 3, S, S) in [-1, 1]; ``clip_pixel_values`` (B, 1, 3, s, s);
                ``face_embeds`` (B, 1, G); ``face_mask`` (B, 1, S, S) in {0, 1}; ``hint`` (B, 9, S, S);
                ``caption`` list of B str; ``drop_identity``/``drop_hint`` (B,) bool.
            generator: CPU generator for the posterior sample, timesteps and noise, in that order.
        """
        device = self.device
        pixel_values = batch["pixel_values"].to(device)
        batch_size = pixel_values.shape[0]
        with torch.no_grad():
            posterior = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist
            latents = posterior.sample(generator=generator).float() * self.vae.config.scaling_factor
            timesteps = torch.randint(
                0, self.noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator
            ).to(device)
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
        target_mask = F.interpolate(batch["face_mask"].to(device).float(), size=predicted_mask.shape[-2:], mode="area")
        per_sample = ((predicted_mask - target_mask) ** 2).flatten(1).mean(dim=1)
        kept = keep_hint.float()
        mask_loss = (per_sample * kept).sum() / kept.sum().clamp(min=1.0)
        total = noise_loss + self.config.training.mask_loss_weight * mask_loss
        return LossTerms(total=total, noise=noise_loss.detach(), mask=mask_loss.detach())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        generator = step_generator(self.config.training.seed, self.global_step, self.global_rank)
        terms = self.compute_loss(batch, generator)
        batch_size = batch["pixel_values"].shape[0]
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
        stream's epoch lengths, and the adapter's architecture so a checkpoint exports alone."""
        checkpoint["state_dict"] = {
            key: value for key, value in checkpoint["state_dict"].items() if key.startswith(ADAPTER_PREFIX)
        }
        if self.batches is not None:
            checkpoint[CHECKPOINT_DATA_KEY] = self.batches.state_dict()
        checkpoint[CHECKPOINT_ADAPTER_CONFIG_KEY] = {
            "capface": dict(self.adapter.capface.config),
            "identity_encoder": dict(self.adapter.identity_encoder.config),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.batches is not None and CHECKPOINT_DATA_KEY in checkpoint:
            self.batches.load_state_dict(checkpoint[CHECKPOINT_DATA_KEY])


__all__ = ["CapHumanTrainingModule", "LossTerms", "ResumableBatches", "step_generator"]
