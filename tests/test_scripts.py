"""The `python scripts/<name>.py` entry points start: each one's --help works from another folder.

Python puts a script's own folder first on the import path, so a script named like a module of the
standard library or of a dependency (``inspect.py``, ``json.py``) would break every script that
imports it indirectly; this runs each one as users do.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_script_help_runs_from_another_folder(script: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
