"""Keep a normal run's output to our own lines.

Libraries print things a user cannot act on: mediapipe's C++ (absl, TFLite) writes "Feedback
manager requires a model with a single signature" and "Created TensorFlow Lite XNNPACK
delegate" straight to file descriptor 2, Lightning prints tips and repeats lines through two
loggers, and several packages emit deprecation warnings about their own dependencies. The CLI
calls :func:`configure` once; ``caphuman -v`` keeps everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# Read by TensorFlow Lite / glog when they start (harmless where a library ignores them).
_NATIVE_LOG_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "2"}

# Warnings about libraries' own internals (the user cannot act on them).
_IGNORED_WARNINGS = (
    (DeprecationWarning, ""),
    (PendingDeprecationWarning, ""),
    (FutureWarning, r".*(LeafSpec|torch\.utils\._pytree|resume_download|`torch\.cuda\.amp|weights_only).*"),
    (UserWarning, r".*(SymbolDatabase\.GetPrototype|TypedStorage is deprecated|upcast_vae|does not have many workers).*"),
)

_QUIET_ENV = "CAPHUMAN_QUIET"
# Set by the CLI only: library users keep their stderr and warnings untouched.
_quiet = False


def configure(verbose: bool) -> None:
    """Quiet third-party output for a CLI run (verbose: leave everything as it is)."""
    global _quiet
    _quiet = not verbose
    if verbose:
        os.environ.pop(_QUIET_ENV, None)
        return
    # Inherited by worker processes (preprocess --workers, DataLoader workers), which silence
    # mediapipe's native lines too.
    os.environ[_QUIET_ENV] = "1"
    for name, value in _NATIVE_LOG_ENV.items():
        os.environ.setdefault(name, value)
    _ignore_warnings()
    for name in ("absl", "diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # absl (imported by mediapipe) prints a "logging before flag parsing" warning otherwise
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


def _ignore_warnings() -> None:
    for category, message in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", category=category, message=message)


def quiet_lightning() -> None:
    """Call after importing Lightning (its import sets its loggers and warning filters back).

    Lightning logs "GPU available", "TPU available" and product tips at INFO through loggers
    with their own handler, so each line came twice (its handler and ours); in a quiet run its
    loggers show warnings only, once, through our handler.
    """
    if not _quiet:
        return
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        lightning_logger = logging.getLogger(name)
        lightning_logger.setLevel(logging.WARNING)
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)
        lightning_logger.propagate = True
    _ignore_warnings()


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null inside the block (in a quiet CLI run only).

    For mediapipe's graph set-up and inference, whose C++ logs bypass Python and its absl
    settings. Python errors are still raised (and shown) after the block.
    """
    if not (_quiet or os.environ.get(_QUIET_ENV) == "1"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded, some notebooks)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def open_mediapipe_solution(build: Callable[[], T]) -> T:
    """``build()`` a mediapipe solution (FaceMesh, Pose, ...) with its native start-up lines
    silenced. The graph opens its calculators on worker threads and logs while doing so, so this
    waits for that inside the silenced block (else the lines appear at a random later moment)."""
    with native_stderr_silenced():
        solution = build()
        graph = getattr(solution, "_graph", None)  # mediapipe's SolutionBase keeps its CalculatorGraph here
        if graph is not None and hasattr(graph, "wait_until_idle"):
            graph.wait_until_idle()
    return solution


__all__ = ["configure", "native_stderr_silenced", "open_mediapipe_solution", "quiet_lightning"]
