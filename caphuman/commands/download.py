"""Download weights hosted on the Hugging Face hub into the weights folder.

NAME is a manifest entry (see `caphuman doctor` and checkpoints/manifest.yaml), e.g.
caphuman_original, stable_diffusion, vae, clip_vision; "all" fetches every hosted entry. Files
that are not on the hub (FaceNet, ArcFace, BiSeNet, DECA, FLAME) are listed with where to get them.

Example:
  caphuman download caphuman_original clip_vision --weights checkpoints
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from caphuman.errors import CapHumanError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="manifest entries to fetch, or 'all'")
    parser.add_argument("--weights", default="checkpoints", help="the weights folder (default: checkpoints)")


def _target_folder(entry, weights_dir: Path) -> Path:
    """A folder entry's files go into that folder; a file goes next to where the manifest puts it."""
    path = weights_dir / entry.path
    return path if entry.hf_files else path.parent


def _is_network_error(error: BaseException) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "NetworkError", "TransportError"})


def download_entry(entry, weights_dir: Path) -> list[Path]:
    """Fetch one entry with hf_hub_download; returns the written paths.

    Raises:
        CapHumanError: the entry is not hosted, there is no network, or the hub refuses.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    if not entry.on_hub:
        raise CapHumanError(f"'{entry.name}' is not on the Hugging Face hub; get it from {entry.source} and put it at {weights_dir / entry.path}.")
    folder = _target_folder(entry, weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename in entry.hf_files or (entry.hf_filename,):
        try:
            written.append(Path(hf_hub_download(repo_id=entry.hf_repo, filename=filename, local_dir=folder)))
        except Exception as error:
            if _is_network_error(error):
                raise CapHumanError(
                    f"Cannot reach the Hugging Face hub to fetch {entry.hf_repo}/{filename} (no network or HF_HUB_OFFLINE is set); "
                    f"download it elsewhere and put it in {folder}."
                ) from None
            if isinstance(error, HfHubHTTPError):
                raise CapHumanError(f"The Hugging Face hub refused {entry.hf_repo}/{filename}: {str(error).splitlines()[0]}") from None
            raise
    return written


def run(args: argparse.Namespace) -> int:
    from caphuman.weights.registry import load_manifest

    entries = load_manifest()
    weights_dir = Path(args.weights)
    names = [name for name, entry in entries.items() if entry.on_hub] if args.names == ["all"] else args.names
    unknown = [name for name in names if name not in entries]
    if unknown:
        raise CapHumanError(f"Unknown weights name(s) {', '.join(unknown)}; known: {', '.join(entries)}.")
    for name in names:
        entry = entries[name]
        for path in download_entry(entry, weights_dir):
            logger.info("Fetched %s", path)
        if entry.config_key and entry.hf_filename and Path(entry.path).name != entry.hf_filename:
            logger.info("Set %s: %s in your config (the hub's file name differs from the default).", entry.config_key, entry.hf_filename)
    return 0
