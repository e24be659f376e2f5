"""Building a pipeline from a config: devices, dtypes, attention backends, missing weights."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from caphuman.build import build_pipeline, resolve_device, resolve_dtype
from caphuman.config import load_config
from caphuman.errors import CapHumanError, MissingWeightsError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_tiny_pipeline_from_config_keeps_sdpa_when_xformers_cannot_run(caplog):
    config = load_config(CONFIGS / "tiny.yaml", ["sampling.attention=xformers"])
    with caplog.at_level(logging.WARNING):
        pipe = build_pipeline(config, device="cpu")
    assert "xformers attention needs CUDA" in caplog.text
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"AttnProcessor2_0"}
    assert pipe.unet.dtype == torch.float32 and pipe.face_recognizer.embedding_dim == 512


def test_devices_and_dtypes():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(CapHumanError, match="Unknown device 'tpu9'"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(CapHumanError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_published_config_names_the_first_missing_file(tmp_path):
    config = load_config(CONFIGS / "caphuman_sd15.yaml")
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "Realistic_Vision_V3.0.ckpt")):
        build_pipeline(config, weights_dir=tmp_path, device="cpu")
