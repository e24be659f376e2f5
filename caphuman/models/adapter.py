"""The CapHuman adapter: everything CapHuman trains (CapFace + identity projections).

Saved on its own, as IP-Adapter-style adapters are: the frozen backbone is loaded from its own
files. Layout of an adapter directory::

    caphuman.json                       format version and the sizes it was built for
    capface/config.json                 CapFaceModel config (a ControlNetModel config)
    capface/diffusion_pytorch_model.safetensors
    identity_encoder/config.json
    identity_encoder/diffusion_pytorch_model.safetensors
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from caphuman.errors import CapHumanError, MissingWeightsError
from caphuman.models.capface import CapFaceModel
from caphuman.models.identity_encoder import IdentityEncoder
from caphuman.outputs import BOOKKEEPING, OutputFolderError, file_mode, folder_mode
from caphuman.weights.registry import weights_entry

ADAPTER_FORMAT_VERSION = 1
METADATA_FILE = "caphuman.json"
# Everything an adapter directory may hold (sample_config.yaml: a training export's). Replacing
# a directory that holds anything else would delete the user's files, so that is refused.
ADAPTER_ENTRIES = frozenset({METADATA_FILE, "capface", "identity_encoder", "sample_config.yaml"})


def check_replaceable(directory: str | os.PathLike) -> None:
    """Raise CapHumanError unless ``directory`` is absent, empty, or an adapter directory
    holding only adapter files (which :meth:`CapHumanAdapter.save_pretrained` replaces whole)."""
    directory = Path(directory)
    if not directory.exists():
        return
    if not directory.is_dir():
        raise OutputFolderError(f"'{directory}' is a file, not a folder; choose a new folder for the adapter.")
    entries = {entry.name for entry in directory.iterdir()} - set(BOOKKEEPING)
    if not entries:
        return
    if METADATA_FILE not in entries or entries - ADAPTER_ENTRIES:
        others = sorted(entries - ADAPTER_ENTRIES) or sorted(entries)
        raise OutputFolderError(
            f"'{directory}' holds files that are not part of a CapHuman adapter ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}); choose a new, empty folder (caphuman never deletes files it did not write)."
        )


class CapHumanAdapter(nn.Module):
    """CapFace and the identity projections, saved and loaded together."""

    def __init__(self, capface: CapFaceModel, identity_encoder: IdentityEncoder):
        super().__init__()
        self.capface = capface
        self.identity_encoder = identity_encoder

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, face_embedding_dim: int, clip_embedding_dim: int, seed: int | None = None) -> CapHumanAdapter:
        """A fresh adapter: CapFace copies the UNet encoder (zero convs: no effect yet)."""
        state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        try:
            capface = CapFaceModel.from_unet(unet)
            identity_encoder = IdentityEncoder(
                face_embedding_dim=face_embedding_dim,
                clip_embedding_dim=clip_embedding_dim,
                cross_attention_dim=unet.config.cross_attention_dim,
            )
        finally:
            if seed is not None:
                torch.random.set_rng_state(state)
        adapter = cls(capface, identity_encoder)
        if unet.dtype != torch.float32 or unet.device.type != "cpu":
            adapter = adapter.to(device=unet.device, dtype=unet.dtype)
        return adapter

    def check_compatible(self, unet: UNet2DConditionModel, clip_embedding_dim: int, face_embedding_dim: int) -> None:
        """Raise CapHumanError when the adapter was built for other backbone or feature sizes."""
        problems = []
        if self.capface.config.cross_attention_dim != unet.config.cross_attention_dim:
            problems.append(f"cross-attention width {self.capface.config.cross_attention_dim} vs the UNet's {unet.config.cross_attention_dim}")
        if tuple(self.capface.config.block_out_channels) != tuple(unet.config.block_out_channels):
            problems.append(f"block widths {tuple(self.capface.config.block_out_channels)} vs the UNet's {tuple(unet.config.block_out_channels)}")
        if self.identity_encoder.config.clip_embedding_dim != clip_embedding_dim:
            problems.append(f"CLIP width {self.identity_encoder.config.clip_embedding_dim} vs the image encoder's {clip_embedding_dim}")
        if self.identity_encoder.config.face_embedding_dim != face_embedding_dim:
            problems.append(f"face embedding {self.identity_encoder.config.face_embedding_dim}-d vs the recogniser's {face_embedding_dim}-d")
        if problems:
            raise CapHumanError("The CapHuman weights do not fit this backbone: " + "; ".join(problems) + ".")

    def save_pretrained(self, directory: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write the adapter as safetensors + JSON configs. The write is atomic: a crash leaves
        either the old directory or the new one, never a mix.

        Raises:
            CapHumanError: ``directory`` holds files other than an adapter's (see
                :func:`check_replaceable`); they are never deleted.
        """
        directory = Path(directory)
        check_replaceable(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        # A whole folder is swapped, not one file, so this cannot use caphuman.outputs.atomic_path:
        # the new adapter is staged in a sibling folder, then renamed over the old one.
        staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp"))
        try:
            self.capface.save_pretrained(staging / "capface", safe_serialization=True)
            self.identity_encoder.save_pretrained(staging / "identity_encoder", safe_serialization=True)
            info = {"format_version": ADAPTER_FORMAT_VERSION, **(metadata or {})}
            (staging / METADATA_FILE).write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
            # mkdtemp makes the folder 0700 (and some writers make files 0600): give everything
            # the modes the user's umask asks for, as a plain mkdir/open would.
            for root, _folders, files in os.walk(staging):
                os.chmod(root, folder_mode())
                for name in files:
                    os.chmod(os.path.join(root, name), file_mode())
            if directory.exists():
                retired = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old"))
                os.replace(directory, retired / "adapter")
                os.replace(staging, directory)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, directory)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> CapHumanAdapter:
        """Load an adapter directory (see module docstring)."""
        directory = Path(directory)
        metadata_path = directory / METADATA_FILE
        if not metadata_path.is_file():
            raise MissingWeightsError(
                "CapHuman weights",
                str(directory),
                f"`caphuman convert --from {weights_entry('caphuman_original').path} --out {directory}` (original checkpoint) or a training export",
            )
        info = json.loads(metadata_path.read_text(encoding="utf-8"))
        if info.get("format_version") != ADAPTER_FORMAT_VERSION:
            raise CapHumanError(
                f"{metadata_path} has format version {info.get('format_version')}; this caphuman reads version {ADAPTER_FORMAT_VERSION}."
            )
        try:
            capface = CapFaceModel.from_pretrained(directory / "capface")
            identity_encoder = IdentityEncoder.from_pretrained(directory / "identity_encoder")
        except OSError as error:
            raise CapHumanError(f"Cannot read the CapHuman weights in '{directory}': {error}") from None
        return cls(capface, identity_encoder)
