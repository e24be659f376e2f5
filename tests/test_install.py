"""A regular (non-editable) install works from any folder: the shipped configs and the weights
manifest travel inside the package, and `--config configs/tiny.yaml` finds them without the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
# What a source distribution of the project holds (the build reads nothing else).
SOURCE_FILES = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "checkpoints/manifest.yaml")
SOURCE_FOLDERS = ("caphuman", "configs")


def copy_source(destination: Path) -> Path:
    """The project's source without its checkout (no .git, no build outputs), so the build and the
    install can only use what setup.py declares."""
    for name in SOURCE_FILES:
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)
    for name in SOURCE_FOLDERS:
        shutil.copytree(ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --no-deps --target`` of a copy of the source: a regular install, dependencies
    taken from this environment (no index, no build isolation, so it runs offline)."""
    source = copy_source(tmp_path_factory.mktemp("source"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
        cwd=source,
        capture_output=True,
        text=True,
    )
    return target


def run_installed(args: list[str], target: Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run Python with only the installed copy on the path (not the checkout, not the editable
    install this environment has: PYTHONPATH entries come before site-packages' finders)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_installed_package_ships_configs_and_manifest(installed, tmp_path):
    probe = (
        "import json, caphuman; from caphuman.config import resolve_config_path; "
        "from caphuman.weights.registry import DEFAULT_MANIFEST, load_manifest;"
        "print(json.dumps({'package': caphuman.__file__, 'config': str(resolve_config_path('configs/benchmarks/smoke.yaml')),"
        " 'manifest': str(DEFAULT_MANIFEST), 'entries': len(load_manifest())}))"
    )
    result = run_installed(["-c", probe], installed, tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(installed)
    config, manifest = Path(found["config"]), Path(found["manifest"])
    assert config.is_relative_to(installed) and manifest.is_relative_to(installed)
    assert config.read_bytes() == (ROOT / "configs" / "benchmarks" / "smoke.yaml").read_bytes()
    assert manifest.read_bytes() == (ROOT / "checkpoints" / "manifest.yaml").read_bytes()
    assert found["entries"] > 0


# ~30 s on 2 busy cores (a fresh interpreter imports torch, diffusers and mediapipe); the probe
# above already proves the shipped files resolve from the installed copy in the default suite.
@pytest.mark.slow
def test_installed_sample_runs_from_another_folder(installed, tmp_path):
    reference = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(reference)
    out = tmp_path / "o"
    command = ["-m", "caphuman.cli", "sample", "--config", "configs/tiny.yaml", "--ref", str(reference)]
    command += ["--prompt", "x", "--steps", "2", "--out", str(out)]
    # The working folder holds no configs/ folder: the config can only come from the package.
    assert not (tmp_path / "configs").exists()
    result = run_installed(command, installed, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    images = sorted(out.glob("image_*.png"))
    assert images and Image.open(images[0]).size == (64, 64)


@pytest.mark.slow
def test_a_missing_config_is_still_a_user_error(installed, tmp_path):
    # A real photo, so that the missing config (not the photo, which sample checks first) is the error.
    Image.fromarray(data.astronaut()).save(tmp_path / "x.png")
    command = ["-m", "caphuman.cli", "sample", "--config", "configs/nope.yaml", "--ref", "x.png", "--prompt", "x", "--out", "o"]
    result = run_installed(command, installed, tmp_path)
    assert result.returncode == 2
    assert "configs/nope.yaml" in result.stderr and "Traceback" not in result.stderr
