"""Convert the original CapHuman release (caphuman.ckpt) into this project's adapter folder.

Reads the checkpoint with torch.load(weights_only=True) (or a .safetensors with the same keys),
maps CapFace (control_model.*), id_linear and img_linear to CapFace + identity projections, skips
the frozen backbone it also contains (loaded from its own files), and writes safetensors.

--out must be a new or empty folder, or (with --overwrite) an adapter folder written earlier; a
folder holding anything else is refused, never emptied.

Example:
  caphuman convert --from checkpoints/caphuman.ckpt --out checkpoints/caphuman
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="CKPT", help="the original caphuman.ckpt")
    parser.add_argument("--out", required=True, metavar="DIR", help="adapter folder to write, new or empty (e.g. checkpoints/caphuman)")
    parser.add_argument("--overwrite", action="store_true", help="replace the adapter already in --out")


def check_output_folder(args: argparse.Namespace) -> None:
    """Refuse, before reading the checkpoint, an --out that is not ours to replace."""
    from pathlib import Path

    from caphuman.models.adapter import check_replaceable
    from caphuman.outputs import BOOKKEEPING, OutputFolderError

    out = Path(args.out)
    check_replaceable(out)
    if out.is_dir() and {entry.name for entry in out.iterdir()} - set(BOOKKEEPING) and not args.overwrite:
        raise OutputFolderError(f"'{out}' already holds a CapHuman adapter; pass --overwrite to replace it, or choose a new --out folder.")


def run(args: argparse.Namespace) -> int:
    check_output_folder(args)
    from caphuman.weights.original_checkpoint import convert_original_checkpoint

    report = convert_original_checkpoint(args.source, args.out)
    logger.info("Wrote %s (%d tensors); set model.caphuman to it.", args.out, report.converted)
    return 0
