"""Check the weights folder: what is present, missing or malformed, and what can therefore run.

Every file of checkpoints/manifest.yaml is validated with the loaders the real path uses (large
checkpoints by their tensor names and shapes only). Paths that a config sets (model.stable_diffusion,
model.vae, model.clip_vision, model.caphuman) are taken from --config. Always exits 0.

Example:
  caphuman doctor --weights checkpoints --config configs/caphuman_sd15.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

_MARKS = {"present": "ok", "missing": "MISSING", "malformed": "MALFORMED", "not used": "-"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="checkpoints", help="the weights folder (default: checkpoints)")
    parser.add_argument("--config", default="configs/caphuman_sd15.yaml", help="config whose model paths to check")
    parser.add_argument("--manifest", default=None, help="manifest to use (default: <weights>/manifest.yaml, else the repository's)")


def builtin_backends() -> list[str]:
    """Backends that need no file in the weights folder."""
    lines = ["tiny backbone (configs/tiny.yaml)", "built-in head prior", "face-mesh face mask (mediapipe)"]
    try:
        from caphuman.faces.dlib_recognizer import find_models_dir

        folder = find_models_dir()
        lines.append("dlib recogniser" + ("" if folder is not None else ": NOT available (face_recognition_models not installed)"))
    except Exception as error:  # dlib itself may be missing; report, do not fail
        lines.append(f"dlib recogniser: NOT available ({type(error).__name__})")
    return lines


def run(args: argparse.Namespace) -> int:
    from caphuman.config import load_config
    from caphuman.errors import CapHumanError
    from caphuman.weights.checks import capability_status, check_entry
    from caphuman.weights.registry import MANIFEST_FILE, load_manifest

    weights_dir = Path(args.weights)
    manifest = args.manifest or (weights_dir / MANIFEST_FILE if (weights_dir / MANIFEST_FILE).is_file() else None)
    entries = load_manifest(manifest)
    config = None
    if args.config:
        try:
            config = load_config(args.config)
        except CapHumanError as error:
            logger.warning("%s Checking the manifest's default paths instead.", error)

    out = sys.stdout
    out.write(f"Weights folder: {weights_dir.resolve()}{'' if weights_dir.is_dir() else ' (does not exist)'}\n\n")
    checks = {}
    for name, entry in entries.items():
        check = check_entry(entry, weights_dir, config)
        checks[name] = check
        where = str(check.path) if check.path is not None else "(switched off)"
        optional = " (optional)" if entry.optional else ""
        out.write(f"  {_MARKS[check.status]:<9} {name:<18} {where}{optional}\n")
        if check.detail and check.status != "present":
            out.write(f"            {check.detail}\n")
    out.write("\nCapabilities:\n")
    for status in capability_status(entries, checks):
        mark = "yes" if status.available else "no "
        needs = "" if status.available else f"  (needs: {', '.join(status.blocking)})"
        out.write(f"  {mark} {status.name:<24} {status.description}{needs}\n")
    out.write("\nAlways available:\n")
    for line in builtin_backends():
        out.write(f"  {line}\n")
    hub = [name for name, entry in entries.items() if entry.on_hub and checks[name].status == "missing"]
    if hub:
        out.write(f"\nOn the Hugging Face hub: caphuman download {' '.join(hub)} --weights {args.weights}\n")
    out.flush()
    return 0
