"""Export trained CapFace + identity projections to the inference format.

The export is a :class:`caphuman.models.adapter.CapHumanAdapter` directory (safetensors + JSON
configs, see that module) plus ``sample_config.yaml``: the run's model and sampling settings with
``model.caphuman`` pointing at the adapter, so that::

    caphuman sample --config <run>/adapter/sample_config.yaml --weights <weights dir> --ref face.jpg --prompt "..."

uses the trained weights. To install it next to other weights, copy the adapter directory to
``<weights dir>/<name>`` and set ``model.caphuman: <name>``.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

from caphuman.config import CapHumanConfig, save_config
from caphuman.errors import CapHumanError
from caphuman.models.adapter import CapHumanAdapter
from caphuman.models.capface import CapFaceModel
from caphuman.models.identity_encoder import IdentityEncoder
from caphuman.training.config import TrainConfig
from caphuman.training.module import ADAPTER_PREFIX, CHECKPOINT_ADAPTER_CONFIG_KEY
from caphuman.weights.files import UnreadableTorchFileError, read_torch_file

logger = logging.getLogger(__name__)

SAMPLE_CONFIG_FILE = "sample_config.yaml"
EMA_CALLBACK_NAME = "EMACallback"


def export_adapter(adapter: CapHumanAdapter, directory: str | os.PathLike, config: TrainConfig, metadata: dict[str, Any] | None = None) -> Path:
    """Save ``adapter`` (as it is now) to ``directory`` with a ready sample config; returns the directory."""
    directory = Path(directory)
    adapter.save_pretrained(directory, metadata={"source": "caphuman train", **(metadata or {})})
    sample_config = CapHumanConfig(
        model=replace(config.model, caphuman=str(directory.resolve())), identity=config.identity, head=config.head, sampling=config.sampling
    )
    save_config(sample_config, directory / SAMPLE_CONFIG_FILE)
    logger.info("Exported the trained adapter to %s", directory)
    return directory


def adapter_from_checkpoint(checkpoint_path: str | os.PathLike, use_ema: bool | None = None) -> tuple[CapHumanAdapter, dict]:
    """Rebuild the trained adapter from a Lightning checkpoint written by `caphuman train`.

    Args:
        checkpoint_path: e.g. <run>/checkpoints/last.ckpt.
        use_ema: True: the EMA weights (error if the run had none); False: the live weights;
            None: the EMA weights when present.
    Returns:
        (adapter, facts) where facts has ``global_step`` and ``ema``.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise CapHumanError(f"Checkpoint '{path}' does not exist.")
    try:
        checkpoint = read_torch_file(path)
    except UnreadableTorchFileError as error:
        if isinstance(error.cause, pickle.UnpicklingError):
            # weights_only refused an object that is not plain data: never unpickle it.
            raise CapHumanError(f"'{path}' holds objects that are not plain tensors; it is not a checkpoint written by `caphuman train`.") from None
        # A truncated or damaged file (torch's zip reader raises RuntimeError).
        reason = (str(error.cause).splitlines() or [type(error.cause).__name__])[0]
        raise CapHumanError(f"Cannot read checkpoint '{path}' ({reason}); it is damaged or truncated.") from None
    if CHECKPOINT_ADAPTER_CONFIG_KEY not in checkpoint:
        raise CapHumanError(f"'{path}' is not a checkpoint written by `caphuman train` (no adapter config in it).")
    configs = checkpoint[CHECKPOINT_ADAPTER_CONFIG_KEY]
    adapter = CapHumanAdapter(CapFaceModel.from_config(configs["capface"]), IdentityEncoder.from_config(configs["identity_encoder"]))
    state = {key[len(ADAPTER_PREFIX) :]: value for key, value in checkpoint["state_dict"].items() if key.startswith(ADAPTER_PREFIX)}
    ema_state = next((value for key, value in checkpoint.get("callbacks", {}).items() if key.startswith(EMA_CALLBACK_NAME)), None)
    if use_ema and ema_state is None:
        raise CapHumanError(f"'{path}' has no EMA weights (training.ema.enabled was off).")
    take_ema = ema_state is not None and use_ema is not False
    if take_ema:
        state.update(ema_state["shadow"])
    adapter.load_state_dict(state, strict=True)
    return adapter, {"global_step": int(checkpoint.get("global_step", 0)), "ema": take_ema}


def export_checkpoint(checkpoint_path: str | os.PathLike, directory: str | os.PathLike, config: TrainConfig, use_ema: bool | None = None) -> Path:
    """Export a training checkpoint's adapter (EMA weights when present) to ``directory``."""
    adapter, facts = adapter_from_checkpoint(checkpoint_path, use_ema)
    return export_adapter(adapter, directory, config, metadata={**facts, "checkpoint": str(Path(checkpoint_path).name)})


__all__ = ["SAMPLE_CONFIG_FILE", "adapter_from_checkpoint", "export_adapter", "export_checkpoint"]
