"""Where the shipped configs and the weights manifest live, in a checkout and in an installed copy.

In the repository (and in an editable install, which runs from it) they sit at the top level:
``configs/*.yaml``, ``configs/benchmarks/*.yaml`` and ``checkpoints/manifest.yaml``, the paths the
README and users type. A regular ``pip install .`` copies only the package, so setup.py maps those
two folders into it as package data under ``caphuman/_shipped/`` with the same relative paths.
:func:`shipped_root` returns whichever of the two roots holds them, so ``configs/tiny.yaml`` names
one file from any folder and with either kind of install.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The package-data folder a regular install has (see ``package_dir`` in setup.py).
SHIPPED_DIR = "_shipped"
# The checkout the package runs from when it is not installed (or installed editable).
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def shipped_root() -> Path:
    """The folder holding ``configs/`` and ``checkpoints/manifest.yaml``: the installed package
    data when present, else the repository root."""
    # Installed wheels are unpacked on disk, so the package's resources are plain files (a Path).
    installed = resources.files(__package__) / SHIPPED_DIR
    if isinstance(installed, Path) and installed.is_dir():
        return installed
    return REPOSITORY_ROOT
