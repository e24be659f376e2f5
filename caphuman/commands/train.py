"""Train CapFace + the identity projections on a preprocessed dataset (Lightning).

Writes into training.output_dir: config.yaml (the resolved config and the command line),
checkpoints/ (last.ckpt + every training.checkpoint_every steps), logs/ (TensorBoard + CSV),
samples/ (validation grids) and adapter/ (the export that `caphuman sample` loads). A new run
needs a new or empty folder; a folder holding a run is continued only with --resume, and one
holding anything else is refused. One process at a time writes a run folder.

Examples:
  caphuman train --config configs/tiny_train.yaml
  caphuman train --config configs/train_sd15.yaml training.data.root=data/celeba training.devices=8
  caphuman train --config configs/train_sd15.yaml --resume           # continue from checkpoints/last.ckpt
  caphuman train --config configs/train_sd15.yaml --export-only      # export last.ckpt to adapter/
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caphuman.errors import CapHumanError, ConfigError

if TYPE_CHECKING:  # torch and the training stack load in run(): `caphuman --help` answers at once
    from caphuman.training.config import TrainConfig

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/train_sd15.yaml", help="training config (YAML)")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoints/last.ckpt")
    parser.add_argument("--export-only", action="store_true", help="only export the last checkpoint to <output_dir>/adapter")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. training.max_steps=1000")


@dataclass
class RunPaths:
    """Where a run writes, all under ``training.output_dir``."""

    root: Path
    checkpoints: Path = field(init=False)
    logs: Path = field(init=False)
    samples: Path = field(init=False)
    adapter: Path = field(init=False)

    def __post_init__(self) -> None:
        self.checkpoints = self.root / "checkpoints"
        self.logs = self.root / "logs"
        self.samples = self.root / "samples"
        self.adapter = self.root / "adapter"


def resolve_resume(config: TrainConfig, paths: RunPaths) -> Path | None:
    resume = config.training.resume
    if resume is None:
        return None
    path = paths.checkpoints / LAST_CHECKPOINT if resume == "last" else Path(resume)
    if not path.is_file():
        raise CapHumanError(f"Cannot resume: checkpoint '{path}' does not exist.")
    check_checkpoint_file(path)
    return path


def check_checkpoint_file(path: Path) -> None:
    """A torch checkpoint is a zip archive whose directory sits at the end of the file, so a
    truncated copy (a disk that filled up, an interrupted transfer) fails here in a moment,
    with the file's name, rather than deep inside Lightning after the models have loaded."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CapHumanError(f"Checkpoint '{path}' is damaged or truncated ({error}); use an earlier checkpoint in {path.parent}.") from None


# What a run writes into training.output_dir.
RUN_ENTRIES = ("config.yaml", "checkpoints", "logs", "samples", "adapter")


def claim_run_folder(config: TrainConfig, resuming: bool):
    """Own training.output_dir for this run (see caphuman.outputs): a new run needs a new or
    empty folder, --resume needs an earlier run's; a folder of other files is refused; one
    process at a time (ranks other than 0 of a distributed run write under rank 0's lock)."""
    import contextlib

    from caphuman.outputs import claim_folder, is_secondary_rank

    if is_secondary_rank():
        return contextlib.nullcontext()
    return claim_folder(
        config.training.output_dir,
        "train",
        existing="pass --resume to continue it",
        allow_existing=resuming,
        new_folder_hint="set training.output_dir to a new folder",
        # A run folder from before owner markers: its config.yaml and checkpoints/ (the user's own
        # extra files in it are never touched: train writes only the names in RUN_ENTRIES).
        adopt=lambda folder, entries: {"config.yaml", "checkpoints"} <= set(entries),
    )


def default_datasets(config: TrainConfig, feature_extractor) -> tuple[Any, Callable[[list[dict]], dict], dict[str, Any]]:
    """The preprocessed dataset at training.data.root (caphuman.data), its collate function and a
    validation batch (the first ``validation.num_references`` records, without dropout).

    The training dataset is endless (``repeat=True``): it moves to the next epoch's order and
    dropout by itself, and :meth:`CapHumanDataset.skip_batches` makes resuming exact.
    """
    from caphuman.data.dataset import CapHumanDataset, ConditionDropout, collate

    data = config.training.data
    if not Path(data.root).exists():
        raise CapHumanError(f"Dataset '{data.root}' does not exist; make it with `caphuman preprocess --images DIR --out {data.root}`.")
    common = dict(image_size=data.image_size, clip_image_processor=feature_extractor, seed=config.training.seed)
    train = CapHumanDataset(data.root, dropout=data.dropout, shuffle=data.shuffle, repeat=True, **common)
    validation = CapHumanDataset(data.root, dropout=ConditionDropout(0.0, 0.0, 0.0), shuffle=False, repeat=False, **common)
    # Read in this process only: the grid's references are the same on every rank.
    validation.set_distributed(0, 1)
    records = []
    for record in validation:
        records.append(record)
        if len(records) == config.training.validation.num_references:
            break
    return train, collate, collate(records)


def csv_version(paths: RunPaths, resume_from: Path | None) -> str:
    if resume_from is None:
        return "csv"
    index = 1
    while (paths.logs / f"csv_resume{index}").exists():
        index += 1
    return f"csv_resume{index}"


def build_strategy(config: TrainConfig):
    """Lightning strategy: "auto", "ddp" or "fsdp" (FSDP keeps the frozen backbone unsharded
    parameters addressable with use_orig_params, and writes full-state checkpoints)."""
    name = config.training.strategy
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(use_orig_params=True, state_dict_type="full")
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # Frozen modules have no gradients; only the adapter's parameters are reduced.
        return DDPStrategy(find_unused_parameters=False)
    return "auto"


def check_config(config: TrainConfig) -> None:
    import torch

    training = config.training
    if training.strategy == "fsdp" and training.ema.enabled:
        raise ConfigError("training.ema.enabled is not supported with training.strategy=fsdp (sharded parameters); use ddp.")
    if training.precision == "16-mixed" and not torch.cuda.is_available() and training.accelerator in ("auto", "cpu"):
        raise ConfigError("training.precision=16-mixed needs a CUDA GPU; use 32-true or bf16-mixed on CPU.")


def train(
    config: TrainConfig,
    datasets: tuple[Any, Callable[[list[dict]], dict], dict[str, Any] | None] | None = None,
    extra_callbacks: Sequence[Any] = (),
    backbone=None,
    command: str | None = None,
):
    """Build everything from ``config`` and fit; returns the trained CapHumanTrainingModule.

    Args:
        config: the run config.
        datasets: (train dataset, collate function, validation batch or None); default: the
            preprocessed dataset at training.data.root (:func:`default_datasets`). A custom
            dataset must be endless with ``skip_batches``, like CapHumanDataset(repeat=True)
            (see :func:`caphuman.training.module.check_endless_dataset`).
        extra_callbacks: more Lightning callbacks (e.g. to record losses).
        backbone: a prebuilt frozen backbone (default: built from model.* and training.weights_dir).
        command: the command line, saved in config.yaml.
    Raises:
        CapHumanError: a bad config, or an output folder that is not this run's to write
            (see :func:`claim_run_folder`).
    """
    check_config(config)
    resume_from = resolve_resume(config, RunPaths(Path(config.training.output_dir)))
    with claim_run_folder(config, resuming=resume_from is not None):
        return _train(config, datasets, extra_callbacks, backbone, command)


def _train(
    config: TrainConfig,
    datasets: tuple[Any, Callable[[list[dict]], dict], dict[str, Any] | None] | None = None,
    extra_callbacks: Sequence[Any] = (),
    backbone=None,
    command: str | None = None,
):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from caphuman.build import load_adapter, load_backbone
    from caphuman.config import CapHumanConfig, save_config
    from caphuman.quiet import quiet_lightning
    from caphuman.training.callbacks import EMACallback, ExportCallback, ValidationSamplesCallback
    from caphuman.training.module import CapHumanTrainingModule, ResumableBatches

    quiet_lightning()
    training = config.training
    paths = RunPaths(Path(training.output_dir))
    resume_from = resolve_resume(config, paths)
    pl.seed_everything(training.seed, workers=True, verbose=False)

    model_config = CapHumanConfig(model=config.model, identity=config.identity, head=config.head, sampling=config.sampling)
    backbone = backbone if backbone is not None else load_backbone(model_config, training.weights_dir)
    adapter = load_adapter(model_config, backbone, training.weights_dir)
    train_dataset, collate_fn, validation_batch = datasets if datasets is not None else default_datasets(config, backbone.feature_extractor)
    batches = ResumableBatches(train_dataset, collate_fn, training.data.batch_size, training.data.num_workers)
    module = CapHumanTrainingModule(config, backbone, adapter, batches)

    callbacks: list[Any] = []
    if training.ema.enabled:
        callbacks.append(EMACallback(training.ema.decay))
    if training.validation.every_n_steps and validation_batch is not None:
        if training.strategy == "fsdp":
            logger.warning("Validation grids are off under FSDP (sharded modules); sample from the export instead.")
        else:
            callbacks.append(ValidationSamplesCallback(config, validation_batch, paths.root))
    if training.checkpoint_every:
        callbacks.append(
            ModelCheckpoint(
                dirpath=paths.checkpoints,
                filename="step={step:07d}",
                auto_insert_metric_name=False,
                every_n_train_steps=training.checkpoint_every,
                save_last=True,
                # "step" is logged by Lightning; keeping the highest steps keeps the newest.
                monitor="step",
                mode="max",
                save_top_k=2,
            )
        )
    callbacks.append(ExportCallback(config, paths.root, every_n_steps=training.checkpoint_every))
    callbacks.extend(extra_callbacks)

    loggers = [
        TensorBoardLogger(save_dir=paths.root, name="logs", version="tensorboard"),
        # Lightning's CSV logger rewrites an existing metrics file, so a resumed run gets its own.
        CSVLogger(save_dir=paths.root, name="logs", version=csv_version(paths, resume_from)),
    ]
    trainer = pl.Trainer(
        accelerator="gpu" if training.accelerator == "cuda" else training.accelerator,
        devices=training.devices,
        num_nodes=training.num_nodes,
        strategy=build_strategy(config),
        precision=training.precision,
        max_steps=training.max_steps,
        max_epochs=-1,
        callbacks=callbacks,
        logger=loggers,
        log_every_n_steps=training.log_every_n_steps,
        gradient_clip_val=training.optimizer.gradient_clip or None,
        enable_checkpointing=bool(training.checkpoint_every),
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        default_root_dir=paths.root,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    if trainer.is_global_zero:
        facts = {"run": {"command": command or shlex.join(sys.argv), "resumed_from": str(resume_from) if resume_from else None}}
        save_config(config, paths.root / "config.yaml", extra=facts)
    with warnings.catch_warnings():
        # The frozen backbone is in eval mode on purpose (see CapHumanTrainingModule.train).
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        if resume_from is not None:
            # A resumed run writes into its own checkpoint folder on purpose.
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        try:
            trainer.fit(module, ckpt_path=resume_from, weights_only=True)
        finally:
            batches.close()
    if training.checkpoint_every and trainer.global_step % training.checkpoint_every:
        # ModelCheckpoint saves every N steps only; keep the final state resumable too.
        trainer.save_checkpoint(paths.checkpoints / LAST_CHECKPOINT, weights_only=False)
    return module


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"Overrides must look like key=value; got {bad[0]!r}.")
    if args.resume:
        overrides.append("training.resume=last")
    from caphuman.training.config import load_train_config

    config = load_train_config(args.config, overrides)
    if args.export_only:
        paths = RunPaths(Path(config.training.output_dir))
        checkpoint = paths.checkpoints / LAST_CHECKPOINT
        if not checkpoint.is_file():
            raise CapHumanError(f"Nothing to export: '{checkpoint}' does not exist.")
        check_checkpoint_file(checkpoint)
        # The export writes adapter/ inside the run: it takes the run's lock (a resumed run
        # writing at the same time is refused) but needs no --resume.
        with claim_run_folder(config, resuming=True):
            from caphuman.training.export import export_checkpoint

            export_checkpoint(checkpoint, paths.adapter, config)
        return 0
    train(config, command=getattr(args, "command_line", None) or shlex.join(sys.argv))
    logger.info("Training done; the adapter is in %s", Path(config.training.output_dir) / "adapter")
    return 0
