"""Convert the original CapHuman release (caphuman.ckpt) into this project's adapter folder.

Reads the checkpoint with torch.load(weights_only=True) (or a .safetensors with the same keys),
maps CapFace (control_model.*), id_linear and img_linear to CapFace + identity projections, skips
the frozen backbone it also contains (loaded from its own files), and writes safetensors.

Example:
  caphuman convert --from checkpoints/caphuman.ckpt --out checkpoints/caphuman
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="CKPT", help="the original caphuman.ckpt")
    parser.add_argument("--out", required=True, metavar="DIR", help="adapter folder to write (e.g. checkpoints/caphuman)")


def run(args: argparse.Namespace) -> int:
    from caphuman.convert import convert_original_checkpoint

    report = convert_original_checkpoint(args.source, args.out)
    logger.info("Wrote %s (%d tensors); set model.caphuman to it.", args.out, report.converted)
    return 0
