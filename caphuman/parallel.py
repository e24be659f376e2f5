"""Splitting a command's work over processes: torchrun ranks or job-array parts.

A :class:`Part` is "part i of N" of a command's work. It comes from ``--part i/N`` (one job of a
SLURM job array, say: ``--part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``) or, under
``torchrun``, from the RANK and WORLD_SIZE variables it sets. Every part works out the same
deterministic assignment of work items to parts on its own, so no part needs to hear from
another while it works; each writes only its own files, atomically; a merge step (rank 0 after
a barrier at the very end under torchrun, or the command's ``--merge`` after a job array) puts
the parts' results together. A part killed mid-run is made up by running it again: finished
items are on disk and are skipped.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import zlib
from dataclasses import dataclass

import torch

from caphuman.errors import CapHumanError

logger = logging.getLogger(__name__)

# A rank that finishes its share early waits at the final barrier for the slowest one; that can
# be hours on a large benchmark, far beyond torch.distributed's default 30 minutes.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Part:
    """Part ``index`` (0-based) of ``count``; ``torchrun``: launched as a rank of torchrun."""

    index: int = 0
    count: int = 1
    torchrun: bool = False

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise CapHumanError(f"Part {self.index}/{self.count} does not exist; give --part i/N with 0 <= i < N.")

    @property
    def whole(self) -> bool:
        """The whole work in one process (no split)."""
        return self.count == 1

    @property
    def tag(self) -> str:
        """A file-name tag for this part's own files, e.g. ``part-002-of-008``."""
        return f"part-{self.index:03d}-of-{self.count:03d}"

    def owns_index(self, number: int) -> bool:
        """Whether item ``number`` of an enumerated list of work is this part's (round robin)."""
        return number % self.count == self.index

    def owns_name(self, name: str) -> bool:
        """Whether the item called ``name`` is this part's, by a stable hash of the name (so an
        item keeps its part when items are added to or removed from the list)."""
        return zlib.crc32(name.encode("utf-8")) % self.count == self.index

    def __str__(self) -> str:
        return f"part {self.index}/{self.count}" + (" (torchrun rank)" if self.torchrun else "")


# The default of functions that take a part: all of the work, in this one process.
WHOLE = Part()

_PART_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_part(text: str) -> Part:
    """``"i/N"`` -> Part(i, N); a user error for anything else."""
    match = _PART_PATTERN.match(text)
    if match is None:
        raise CapHumanError(f"--part must look like i/N (part i of N, 0-based), got '{text}'.")
    return Part(int(match.group(1)), int(match.group(2)))


def resolve_part(part: str | None) -> Part:
    """This process's part: ``--part`` if given, else torchrun's RANK/WORLD_SIZE, else the whole.

    Raises:
        CapHumanError: both --part and a torchrun launch with several ranks.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if part is not None:
        if world_size > 1:
            raise CapHumanError("--part splits work between separate jobs; under torchrun the ranks split it already, so leave --part out.")
        return parse_part(part)
    if world_size > 1:
        return Part(int(os.environ["RANK"]), world_size, torchrun=True)
    return WHOLE


def device_for_part(device: torch.device, part: Part) -> torch.device:
    """Under torchrun, ``cuda`` without an index means this rank's GPU (LOCAL_RANK)."""
    if part.torchrun and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wait_for_all_ranks(part: Part) -> None:
    """Barrier over torchrun's ranks (gloo, so it needs no GPU), then leave the group.

    Called once, at the end, before rank 0 merges: ranks never wait on each other while working.
    """
    if not part.torchrun:
        return
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    logger.info("%s: done; waiting for the other ranks.", part)
    dist.barrier()
    if created:
        dist.destroy_process_group()


__all__ = ["BARRIER_TIMEOUT", "WHOLE", "Part", "device_for_part", "parse_part", "resolve_part", "wait_for_all_ranks"]
