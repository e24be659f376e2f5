"""Nonsense input is one sentence and exit code 2, caught before any model loads (issue 10)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from caphuman.checks import check_positive, check_range, check_seed
from caphuman.cli import main
from caphuman.config import load_config
from caphuman.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match="finite"):
        check_positive("x", value)
    with pytest.raises(ConfigError, match="finite"):
        check_range("x", value, -1, 1)


@pytest.mark.parametrize(
    "override, key",
    [
        ("sampling.guidance_scale=nan", "sampling.guidance_scale"),
        ("sampling.capface_strength=inf", "sampling.capface_strength"),
        ("sampling.num_inference_steps=0", "sampling.num_inference_steps"),
        ("sampling.seed=-3", "sampling.seed"),
        ("sampling.eta=2.0", "sampling.eta"),
    ],
)
def test_config_values_are_checked(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TINY, [override])


def test_seed_bounds():
    check_seed("s", 0)
    check_seed("s", 2**64 - 1)
    with pytest.raises(ConfigError):
        check_seed("s", 2**64)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--steps", "-1"),
        ("--yaw", "nan"),
        ("--pitch", "400"),
        ("--guidance-scale", "inf"),
        ("--seed", "-5"),
        ("--num-images", "0"),
        ("--face-index", "-1"),
        ("--capface-strength", "abc"),
    ],
)
def test_bad_sample_flags_exit_2_before_anything_loads(tmp_path, capsys, flag, value):
    assert main(["sample", "--config", TINY, "--ref", "face.jpg", "--prompt", "x", "--out", str(tmp_path / "o"), flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--steps", "--max-identities"])
def test_bad_eval_counts_exit_2(tmp_path, capsys, flag):
    assert main(["eval", "--benchmark", "b.yaml", "--identities", str(tmp_path), "--out", str(tmp_path / "o"), flag, "0"]) == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, needle",
    [(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "binary"), (b"sampling: [unclosed\n  - x: :", "not valid YAML"), (b"- a\n- b\n", "mapping")],
)
def test_malformed_or_binary_config_is_one_sentence_naming_the_file(tmp_path, content, needle):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle) as error:
        load_config(path)
    assert "bad.yaml" in str(error.value)


def test_an_out_that_is_a_file_is_refused_in_one_sentence(tmp_path):
    face = tmp_path / "face.png"
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).save(face)
    out = tmp_path / "out.png"
    out.write_bytes(b"a file")
    result = subprocess.run(
        [sys.executable, "-m", "caphuman.cli", "sample", "--config", TINY, "--ref", str(face), "--prompt", "x", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "is a file" in result.stderr and "Traceback" not in result.stderr
    assert out.read_bytes() == b"a file"


def test_method_hook_with_the_wrong_signature_is_refused():
    from caphuman.errors import CapHumanError
    from caphuman.eval.methods import get_method

    with pytest.raises(CapHumanError, match="request, context"):
        get_method("math:sqrt")  # takes one argument
    with pytest.raises(CapHumanError, match="not a function"):
        get_method("math:pi")
