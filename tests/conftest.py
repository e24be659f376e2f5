"""Shared fixtures: tiny components built locally (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest
import torch

# Tests run on CPU with deterministic kernels and a fixed thread count for stable timings.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: the tiny model's tensors gain nothing from a second
    thread, and on a shared 2-core machine OpenMP's per-op barriers stall whenever the other core
    is busy (measured with a neighbour using both cores: a tiny 4-step sample took 0.08 s on one
    thread, 11.7 s on two). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# The tiny config users run (`caphuman sample --config configs/tiny.yaml`): fixtures build from it
# through the same loaders the CLI uses, so tests exercise the user's path, not a hand-made copy.
TINY_CONFIG = "configs/tiny.yaml"


@pytest.fixture(scope="session")
def tiny_backbone():
    """The tiny backbone of configs/tiny.yaml, built once per session (nothing is read from disk)."""
    from caphuman.build import load_backbone
    from caphuman.config import load_config

    return load_backbone(load_config(TINY_CONFIG), weights_dir="checkpoints")


@pytest.fixture()
def tiny_pipeline():
    """A fresh tiny CapHuman pipeline (zero-initialised CapFace, stand-in recogniser) from
    ``build_pipeline``, the builder `caphuman sample` calls; its own modules, so a test may cast or
    change them without touching other tests."""
    from caphuman.build import build_pipeline
    from caphuman.config import load_config

    pipe = build_pipeline(load_config(TINY_CONFIG), weights_dir="checkpoints", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture()
def stable_diffusion(tiny_pipeline):
    """diffusers' own StableDiffusionPipeline on the tiny pipeline's UNet, VAE, text encoder and
    schedule: the independent implementation the pipeline's tests compare with."""
    from diffusers import StableDiffusionPipeline

    from caphuman.schedulers import make_scheduler

    pipe = StableDiffusionPipeline(
        vae=tiny_pipeline.vae,
        text_encoder=tiny_pipeline.text_encoder,
        tokenizer=tiny_pipeline.tokenizer,
        unet=tiny_pipeline.unet,
        scheduler=make_scheduler("ddim"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
