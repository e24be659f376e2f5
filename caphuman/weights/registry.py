"""Where every weights file lives: the manifest (checkpoints/manifest.yaml) and lookups in it.

``checkpoints/manifest.yaml`` lists every file the real (non-tiny) path reads: where it goes
under the weights folder, its kind, checksums where known, where to get it, its licence, and
which capabilities (commands/backends) need it. It is the only place that knows a file's
location and source: loaders ask :func:`weights_entry` / :func:`default_location` for them, and
name the entry's ``source`` when a file is missing, so ``caphuman doctor``, ``caphuman download``
and every "missing file" error agree.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from caphuman._resources import shipped_root
from caphuman.errors import CapHumanError, MissingWeightsError

MANIFEST_FILE = "manifest.yaml"
# The repository's checkpoints/manifest.yaml, or its copy inside an installed package.
DEFAULT_MANIFEST = shipped_root() / "checkpoints" / MANIFEST_FILE
# Kinds whose files are also found directly in the weights folder, not only at their manifest
# path: DECA's data files, which users often drop next to the others.
FLAT_FALLBACK_KINDS = ("deca_model", "flame_model", "flame_texture", "file")


@dataclass(frozen=True)
class WeightEntry:
    """One manifest entry (see checkpoints/manifest.yaml for the meaning of each field)."""

    name: str
    path: str
    kind: str
    source: str
    licence: str
    needed_by: tuple[str, ...] = ()
    optional: bool = False
    config_key: str | None = None
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None
    hf_files: tuple[str, ...] = ()
    hf_verified: bool = False
    alternative_paths: tuple[str, ...] = ()

    @property
    def on_hub(self) -> bool:
        return self.hf_repo is not None and (self.hf_filename is not None or bool(self.hf_files))


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, WeightEntry]:
    """Entries of ``manifest.yaml`` by name (default: the repository's checkpoints/manifest.yaml).

    Raises:
        CapHumanError: the file is missing or an entry lacks a required field.
    """
    path = Path(path) if path is not None else DEFAULT_MANIFEST
    if not path.is_file():
        raise CapHumanError(f"Weights manifest '{path}' does not exist.")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries: dict[str, WeightEntry] = {}
    known = set(WeightEntry.__dataclass_fields__)
    for name, fields in (data.get("files") or {}).items():
        unknown = set(fields) - known
        if unknown:
            raise CapHumanError(f"Manifest '{path}' entry '{name}' has unknown field(s) {sorted(unknown)}.")
        try:
            entries[name] = WeightEntry(
                name=name,
                **{key: tuple(value) if key in ("needed_by", "hf_files", "alternative_paths") else value for key, value in fields.items()},
            )
        except TypeError as error:
            raise CapHumanError(f"Manifest '{path}' entry '{name}' is incomplete ({error}).") from None
    return entries


def config_value(config: Any, dotted_key: str) -> Any:
    """``config.model.vae`` for ``"model.vae"`` (a missing attribute raises AttributeError)."""
    value = config
    for part in dotted_key.split("."):
        value = getattr(value, part)
    return value


def entry_path(entry: WeightEntry, weights_dir: str | os.PathLike, config: Any | None = None) -> Path | None:
    """Where ``entry`` is expected: the config's value when it has one, else the manifest path.

    Returns None when the config switches the file off (e.g. ``model.vae: null``).
    """
    relative: str | None = entry.path
    if config is not None and entry.config_key is not None:
        relative = config_value(config, entry.config_key)
        if relative is None:
            return None
    return weights_path(weights_dir, relative)


def weights_path(weights_dir: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """``relative`` under ``weights_dir``; an absolute path stays as it is."""
    path = Path(relative)
    return path if path.is_absolute() else Path(weights_dir) / path


def find_entry_file(entry: WeightEntry, weights_dir: str | os.PathLike, config: Any | None = None) -> Path | None:
    """Where ``entry`` is on disk: :func:`entry_path`, or the file's bare name directly in
    ``weights_dir`` for the :data:`FLAT_FALLBACK_KINDS` when only that exists. Returns the
    expected path when neither exists, and None when the config switches the file off."""
    path = entry_path(entry, weights_dir, config)
    if path is not None and not path.exists() and entry.kind in FLAT_FALLBACK_KINDS and (Path(weights_dir) / path.name).exists():
        return Path(weights_dir) / path.name
    return path


# ------------------------------------------------------------------------------------------
# Lookups in the shipped manifest (what the loaders use)


@functools.cache
def shipped_manifest() -> dict[str, WeightEntry]:
    """The shipped manifest's entries, read once per process."""
    return load_manifest(DEFAULT_MANIFEST)


def weights_entry(name: str) -> WeightEntry:
    """The shipped manifest's entry ``name`` (e.g. "facenet").

    Raises:
        KeyError: no such entry (a programming error: the names are fixed in the manifest).
    """
    return shipped_manifest()[name]


def default_location(name: str, weights_dir: str | os.PathLike) -> Path:
    """Where entry ``name``'s file goes under ``weights_dir`` (its manifest path)."""
    return weights_path(weights_dir, weights_entry(name).path)


def missing_weights(name: str, what: str, path: str | os.PathLike, hint: str = "") -> MissingWeightsError:
    """The error for entry ``name``'s missing file at ``path``: what it is, where it goes and where
    to get it (the manifest's ``source``, then ``hint`` when given)."""
    return MissingWeightsError(what, str(path), weights_entry(name).source + hint)
