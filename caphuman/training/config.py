"""Typed training configuration: the model part of :class:`caphuman.config.CapHumanConfig` plus
how to train it.

A training YAML has three sections::

    model:     caphuman.config.ModelConfig  (what is built; model.caphuman = adapter to start from, or null)
    sampling:  caphuman.config.SamplingConfig (used by the validation grids and written next to the export)
    training:  TrainingConfig below

Defaults follow the published recipe (AdamW lr 1e-4, fp16 mixed precision, mask-loss weight 1.0,
512 px); load with :func:`load_train_config`, which validates every key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from caphuman.config import (
    ATTENTION_BACKENDS,
    HeadInputConfig,
    IdentityConfig,
    ModelConfig,
    SamplingConfig,
    check_choice,
    check_positive,
    load_structured,
)
from caphuman.data.dropout import ConditionDropout
from caphuman.errors import ConfigError

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
STRATEGIES = ("auto", "ddp", "fsdp")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
# Written in the published CapHuman style: a plain description of the person and scene.
DEFAULT_VALIDATION_PROMPTS = [
    "a photo of a person",
    "a photo of a person, in the snow",
    "a close-up photo of a person, smiling, studio lighting",
]


@dataclass
class DataConfig:
    """The preprocessed dataset (written by `caphuman preprocess`) and how it is batched."""

    root: str = "data/caphuman"
    image_size: int = 512
    # Per device; the effective batch is batch_size x devices x num_nodes (published: 16 x 8).
    batch_size: int = 16
    num_workers: int = 4
    shuffle: bool = True
    dropout: ConditionDropout = field(default_factory=ConditionDropout)

    def __post_init__(self) -> None:
        check_positive("training.data.batch_size", self.batch_size)
        check_positive("training.data.num_workers", self.num_workers, allow_zero=True)
        if self.image_size <= 0 or self.image_size % 8:
            raise ConfigError(f"training.data.image_size must be a positive multiple of 8, got {self.image_size}.")


@dataclass
class OptimizerConfig:
    """AdamW on CapFace + the identity projections only (torch's AdamW defaults otherwise)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    # Global-norm gradient clipping; 0 disables it (the published recipe does not clip).
    gradient_clip: float = 0.0

    def __post_init__(self) -> None:
        check_positive("training.optimizer.lr", self.lr)
        check_positive("training.optimizer.weight_decay", self.weight_decay, allow_zero=True)
        check_positive("training.optimizer.gradient_clip", self.gradient_clip, allow_zero=True)
        if len(self.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ConfigError(f"training.optimizer.betas must be two values in [0, 1), got {list(self.betas)}.")


@dataclass
class EMAConfig:
    """Exponential moving average of the trained weights; when on, exports use the EMA weights."""

    enabled: bool = False
    decay: float = 0.9999

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ConfigError(f"training.ema.decay must be in (0, 1), got {self.decay}.")


@dataclass
class ValidationConfig:
    """Sample grids written to <output_dir>/samples/ every ``every_n_steps`` (0 disables them)."""

    every_n_steps: int = 1000
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_VALIDATION_PROMPTS))
    # How many dataset records give the identities and hints of the grid's columns.
    num_references: int = 4
    num_inference_steps: int = 20
    guidance_scale: float = 7.0
    seed: int = 1234

    def __post_init__(self) -> None:
        check_positive("training.validation.every_n_steps", self.every_n_steps, allow_zero=True)
        check_positive("training.validation.num_references", self.num_references)
        check_positive("training.validation.num_inference_steps", self.num_inference_steps)
        if self.every_n_steps and not self.prompts:
            raise ConfigError("training.validation.prompts must list at least one prompt when validation is on.")


@dataclass
class TrainingConfig:
    """How CapFace and the identity projections are trained."""

    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    max_steps: int = 100_000
    # Lightning precision: "16-mixed" as published (fp16 autocast, fp32 master weights), "bf16-mixed", "32-true".
    precision: str = "16-mixed"
    mask_loss_weight: float = 1.0
    gradient_checkpointing: bool = False
    # "sdpa" (PyTorch scaled-dot-product attention) or "xformers" (CUDA only, when installed).
    attention: str = "sdpa"
    strategy: str = "auto"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    seed: int = 0
    checkpoint_every: int = 1000
    log_every_n_steps: int = 10
    # Everything a run writes: config.yaml, checkpoints/, logs/, samples/, adapter/.
    output_dir: str = "runs/caphuman_sd15"
    # Weights folder the backbone (and model.caphuman, when set) are read from.
    weights_dir: str = "checkpoints"
    # null: a fresh run; "last": <output_dir>/checkpoints/last.ckpt; or a checkpoint path.
    resume: str | None = None

    def __post_init__(self) -> None:
        check_choice("training.precision", self.precision, PRECISIONS)
        check_choice("training.strategy", self.strategy, STRATEGIES)
        check_choice("training.accelerator", self.accelerator, ACCELERATORS)
        check_choice("training.attention", self.attention, ATTENTION_BACKENDS)
        check_positive("training.max_steps", self.max_steps)
        check_positive("training.mask_loss_weight", self.mask_loss_weight, allow_zero=True)
        check_positive("training.devices", self.devices)
        check_positive("training.num_nodes", self.num_nodes)
        check_positive("training.checkpoint_every", self.checkpoint_every, allow_zero=True)
        check_positive("training.log_every_n_steps", self.log_every_n_steps)


@dataclass
class TrainConfig:
    """A whole training run: the model (as sampling builds it), sampling settings, training."""

    model: ModelConfig = field(default_factory=ModelConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    head: HeadInputConfig = field(default_factory=HeadInputConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


def load_train_config(path: str | os.PathLike | None = None, overrides: dict | list[str] | None = None) -> TrainConfig:
    """Load and validate a :class:`TrainConfig` from YAML plus ``key=value`` overrides.

    Raises:
        ConfigError: unknown key, wrong type, invalid value or unreadable file (the message names it).
    """
    return load_structured(TrainConfig, path, overrides)


__all__ = [
    "DataConfig",
    "EMAConfig",
    "OptimizerConfig",
    "TrainConfig",
    "TrainingConfig",
    "ValidationConfig",
    "load_train_config",
]
