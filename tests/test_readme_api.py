"""The README's Python API example runs as printed, on the tiny config (only the config path changed)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


def readme_python_api_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"### Python API\n\n```python\n(.*?)```", readme, flags=re.DOTALL)
    assert found, "README has no Python API example"
    return found.group(1)


def test_readme_python_api_example_runs_on_the_tiny_config(tmp_path, monkeypatch):
    code = readme_python_api_example()
    assert len(code.strip().splitlines()) <= 16
    assert '"configs/caphuman_sd15.yaml"' in code
    # Only the config path is adapted; the optional pose-photo line is switched on too.
    code = code.replace('"configs/caphuman_sd15.yaml"', repr(str(REPO / "configs" / "tiny.yaml")))
    code = code.replace("    # from caphuman.head.params import transfer;", "    from caphuman.head.params import transfer;")
    astronaut = skimage.data.astronaut()
    Image.fromarray(astronaut).save(tmp_path / "face.jpg")
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(tmp_path / "pose.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    saved = Image.open(tmp_path / "man_in_snow.png")
    assert len(namespace["images"]) == 2
    assert saved.mode == "RGB" and saved.size[0] > 0
    assert tuple(namespace["hint"].shape[:2]) == (1, 9)
