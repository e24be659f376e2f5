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


@pytest.fixture(scope="session")
def tiny_backbone():
    from caphuman.models.tiny import tiny_backbone as build

    return build()


@pytest.fixture()
def tiny_pipeline(tiny_backbone):
    """A fresh tiny CapHuman pipeline (zero-initialised CapFace) with a stand-in recogniser."""
    from caphuman.faces.tiny_recognizer import TinyFaceRecognizer
    from caphuman.models.adapter import CapHumanAdapter
    from caphuman.pipeline import CapHumanPipeline
    from caphuman.schedulers import make_scheduler

    backbone = tiny_backbone
    adapter = CapHumanAdapter.from_unet(backbone.unet, 512, backbone.image_encoder.config.hidden_size, seed=0)
    pipe = CapHumanPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=backbone.unet,
        capface=adapter.capface,
        identity_encoder=adapter.identity_encoder,
        image_encoder=backbone.image_encoder,
        image_processor=backbone.image_processor,
        scheduler=make_scheduler("ddim", backbone.scheduler_config),
        face_recognizer=TinyFaceRecognizer(512, seed=0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
