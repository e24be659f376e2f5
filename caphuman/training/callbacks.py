"""Training callbacks: EMA of the trained weights, validation sample grids, export.

Order matters: EMA updates first, so a grid or an export at step N sees the EMA after step N.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from PIL import Image

from caphuman.conditions.hint_layout import SHADED_CHANNELS
from caphuman.conditions.identity import IdentityInputs
from caphuman.config import SamplingConfig
from caphuman.models.adapter import CapHumanAdapter
from caphuman.outputs import save_image_atomically
from caphuman.pipeline import CapHumanPipeline
from caphuman.schedulers import make_scheduler
from caphuman.training.config import TrainConfig
from caphuman.training.export import export_adapter

logger = logging.getLogger(__name__)


class EMACallback(pl.Callback):
    """Exponential moving average of the adapter's trained parameters.

    After each optimiser step: ``ema = d * ema + (1 - d) * param`` with
    ``d = min(decay, (1 + n) / (10 + n))`` for the n-th update (the usual warm-up, so early
    exports are not dominated by the initial weights). Saved in and restored from checkpoints.
    """

    def __init__(self, decay: float):
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}
        self.updates = 0
        self._last_step = -1

    @staticmethod
    def _trained(adapter: CapHumanAdapter) -> dict[str, torch.nn.Parameter]:
        return {name: parameter for name, parameter in adapter.named_parameters() if parameter.requires_grad}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = self._trained(pl_module.adapter)
        if not self.shadow:
            self.shadow = {name: parameter.detach().float().clone() for name, parameter in params.items()}
        else:  # restored from a checkpoint: put it next to the weights
            self.shadow = {name: self.shadow[name].to(params[name].device) for name in params}
        self._last_step = trainer.global_step

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # no optimiser step this batch
            return
        self._last_step = trainer.global_step
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, parameter in self._trained(pl_module.adapter).items():
            self.shadow[name].lerp_(parameter.detach().float(), 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": {name: value.cpu() for name, value in self.shadow.items()}, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = dict(state_dict["shadow"])
        self.updates = int(state_dict["updates"])

    @contextlib.contextmanager
    def applied(self, adapter: CapHumanAdapter) -> Iterator[None]:
        """Temporarily load the EMA weights into ``adapter`` (restored on exit)."""
        params = self._trained(adapter)
        saved = {name: parameter.detach().clone() for name, parameter in params.items()}
        with torch.no_grad():
            for name, parameter in params.items():
                parameter.copy_(self.shadow[name].to(parameter.device, parameter.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, parameter in params.items():
                    parameter.copy_(saved[name])


def find_ema(trainer: pl.Trainer) -> EMACallback | None:
    return next((callback for callback in trainer.callbacks if isinstance(callback, EMACallback)), None)


def trained_weights(trainer: pl.Trainer, adapter: CapHumanAdapter) -> contextlib.AbstractContextManager:
    """The weights to show or export: the EMA's when EMA is on, else the live ones."""
    ema = find_ema(trainer)
    return ema.applied(adapter) if ema is not None else contextlib.nullcontext()


def stack_image_rows(rows: list[torch.Tensor]) -> Image.Image:
    """Stack rows of (N, 3, H, W) images in [0, 1] into one grid image (rows top to bottom)."""
    strips = [torch.cat(list(row.float().clamp(0, 1).cpu()), dim=2) for row in rows]  # each (3, H, N*W)
    grid = torch.cat(strips, dim=1)
    return Image.fromarray((grid.permute(1, 2, 0).numpy() * 255.0).round().astype("uint8"))


class ValidationSamplesCallback(pl.Callback):
    """Every ``every_n_steps``: sample each validation prompt for a few dataset records.

    The grid's columns are the records; its rows are the target photo, the hint's shaded
    render, then one row per prompt (the record's identity and hint, a fixed seed). Written
    to <output_dir>/samples/step_XXXXXXX.png and to TensorBoard when that logger is on.

    Args:
        config: the run config (validation prompts, steps, guidance; sampling.scheduler).
        references: a collated batch of N records without condition dropout.
        output_dir: the run directory.
    """

    def __init__(self, config: TrainConfig, references: dict[str, Any], output_dir: str | os.PathLike):
        self.config = config
        self.references = references
        self.output_dir = Path(output_dir)
        self.written: list[Path] = []

    def build_pipeline(self, pl_module: pl.LightningModule):
        pipe = CapHumanPipeline(
            vae=pl_module.vae,
            text_encoder=pl_module.text_encoder,
            tokenizer=pl_module.tokenizer,
            unet=pl_module.unet,
            capface=pl_module.adapter.capface,
            identity_encoder=pl_module.adapter.identity_encoder,
            image_encoder=pl_module.image_encoder,
            feature_extractor=pl_module.feature_extractor,
            scheduler=make_scheduler(self.config.sampling.scheduler, pl_module.scheduler_config),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Image.Image:
        validation = self.config.training.validation
        device = pl_module.device
        refs = self.references
        identity = IdentityInputs(refs["face_embeds"].float(), refs["clip_pixel_values"])
        hint = refs["hint"].to(device)
        rows = [(refs["pixel_values"].float() + 1.0) / 2.0, refs["hint"][:, SHADED_CHANNELS].float()]
        pipe = self.build_pipeline(pl_module)
        precision = self.config.training.precision
        autocast = (
            torch.autocast(device.type, dtype=torch.float16 if precision == "16-mixed" else torch.bfloat16)
            if precision != "32-true" and device.type == "cuda"
            else contextlib.nullcontext()
        )
        # The published sampler settings except the validation section's steps and guidance.
        sampling = SamplingConfig(num_inference_steps=validation.num_inference_steps, guidance_scale=validation.guidance_scale)
        was_training = pl_module.adapter.training
        pl_module.adapter.eval()
        try:
            with trained_weights(trainer, pl_module.adapter), autocast:
                for prompt in validation.prompts:
                    generator = torch.Generator(device="cpu").manual_seed(validation.seed)
                    images = pipe(
                        [prompt] * hint.shape[0],
                        hint,
                        identity=identity,
                        generator=generator,
                        output_type="pt",
                        **sampling.pipeline_kwargs(),
                    ).images
                    rows.append(images.float())
        finally:
            pl_module.adapter.train(was_training)
        return stack_image_rows(rows)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.config.training.validation.every_n_steps
        if not every or trainer.global_step % every or not trainer.is_global_zero:
            return
        grid = self.render(trainer, pl_module)
        path = self.output_dir / "samples" / f"step_{trainer.global_step:07d}.png"
        save_image_atomically(grid, path)
        self.written.append(path)
        logger.info("Wrote validation samples %s", path)
        for experiment_logger in trainer.loggers:
            experiment = getattr(experiment_logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                import numpy as np

                experiment.add_image("validation/samples", np.asarray(grid), trainer.global_step, dataformats="HWC")


class ExportCallback(pl.Callback):
    """Writes the trained adapter (EMA weights when on) in the inference format at the end of
    training and every ``every_n_steps`` (0: only at the end); see caphuman.training.export."""

    def __init__(self, config: TrainConfig, output_dir: str | os.PathLike, every_n_steps: int = 0):
        self.config = config
        self.output_dir = Path(output_dir)
        self.every_n_steps = every_n_steps
        self._exported_step = -1

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The last step is often also a periodic one: its weights are on disk already.
        if not trainer.is_global_zero or trainer.global_step == self._exported_step:
            return
        self._exported_step = trainer.global_step
        with trained_weights(trainer, pl_module.adapter):
            export_adapter(
                pl_module.adapter,
                self.output_dir / "adapter",
                self.config,
                metadata={"global_step": trainer.global_step, "ema": find_ema(trainer) is not None},
            )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.export(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.export(trainer, pl_module)


__all__ = ["EMACallback", "ExportCallback", "ValidationSamplesCallback", "stack_image_rows", "trained_weights"]
