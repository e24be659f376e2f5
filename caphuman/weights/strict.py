"""The one strict loader: check a state dict's names and shapes against a module, then load it.

Every weights file that becomes a module's parameters goes through :func:`load_checked`, so a
file that does not fit fails the same way everywhere: one :class:`~caphuman.errors.CapHumanError`
sentence naming the file, what it should hold, and the first few missing, unexpected and
mis-shaped names (as the file spells them). torch's own ``load_state_dict(strict=True)`` would
stop at a RuntimeError listing every key, which is neither a sentence nor names the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from caphuman.errors import CapHumanError

logger = logging.getLogger(__name__)

# How many names of each kind of problem a message shows.
_SHOWN = 5


def is_batchnorm_counter(key: str) -> bool:
    """BatchNorm's step counter: absent from files saved before PyTorch 0.4.1 and from TensorFlow
    conversions, and unused at inference, so a file may lack it."""
    return key.endswith("num_batches_tracked")


def expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every entry of ``module``'s state dict (also for meta-device modules)."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def _listed(label: str, entries: Sequence[str]) -> str:
    shown = ", ".join(entries[:_SHOWN]) + (f" and {len(entries) - _SHOWN} more" if len(entries) > _SHOWN else "")
    return f"{len(entries)} {label} ({shown})"


def check_state_dict(
    expected: Mapping[str, Sequence[int]],
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    what: str,
    may_lack: Callable[[str], bool] | None = None,
    ignore_unexpected: bool = False,
    name_in_file: Callable[[str], str] | None = None,
) -> None:
    """Raise unless ``state`` has exactly the names and shapes in ``expected``.

    Args:
        expected: name -> shape the module wants (see :func:`expected_shapes`).
        state: the tensors read from ``path``.
        path, what: named in the message ("'<path>' does not match the <what> layout: ...").
        may_lack: names the file may omit (e.g. :func:`is_batchnorm_counter`).
        ignore_unexpected: allow (and later skip) names the module does not have.
        name_in_file: how the file spells one of our names, for the message (default: as is).
    Raises:
        CapHumanError: naming up to five missing, unexpected and mis-shaped entries of each kind.
    """
    spelled = name_in_file or (lambda key: key)
    missing = sorted(spelled(key) for key in expected if key not in state and not (may_lack and may_lack(key)))
    unexpected = [] if ignore_unexpected else sorted(key for key in state if key not in expected)
    mis_shaped = sorted(
        f"{spelled(key)} {tuple(value.shape)} in the file, {tuple(expected[key])} expected"
        for key, value in state.items()
        if key in expected and tuple(value.shape) != tuple(expected[key])
    )
    problems = [
        _listed(label, entries) for label, entries in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)) if entries
    ]
    if problems:
        raise CapHumanError(f"'{path}' does not match the {what} layout: " + "; ".join(problems) + ".")


def load_checked(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    what: str,
    may_lack: Callable[[str], bool] | None = None,
    ignore_unexpected: bool = False,
    name_in_file: Callable[[str], str] | None = None,
    dtype: torch.dtype | None = None,
    assign: bool = False,
) -> nn.Module:
    """:func:`check_state_dict`, then load ``state`` into ``module`` and return it.

    Args:
        dtype: cast floating tensors to it first (None: keep the file's dtype for assign, or
            let ``copy_`` convert into the module's dtype).
        assign: make the tensors the module's parameters instead of copying into them (for
            modules built on the meta device: no second copy of the weights is made).
    Raises:
        CapHumanError: see :func:`check_state_dict`.
    """
    expected = expected_shapes(module)
    check_state_dict(expected, state, path, what, may_lack, ignore_unexpected, name_in_file)
    used = {key: value for key, value in state.items() if key in expected}
    if len(used) < len(state):
        logger.debug(
            "Ignoring %d entries of %s that %s does not use, e.g. %s", len(state) - len(used), path, what, sorted(set(state) - set(used))[:3]
        )
    if dtype is not None:
        # .to() returns the same tensor when it already has the dtype.
        used = {key: value.to(dtype) if value.is_floating_point() else value for key, value in used.items()}
    if assign:
        used = {key: value.contiguous() for key, value in used.items()}
    # Names and shapes are checked above; strict=False only admits the names ``may_lack`` allowed.
    module.load_state_dict(used, strict=False, assign=assign)
    return module
