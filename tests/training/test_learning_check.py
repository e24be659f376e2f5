"""The learning check (benchmarks/learning_check.py) on a shorter, fixed-step schedule.

After pretraining the tiny backbone on head renders and training CapFace with the project's
loss on (render, hint) pairs, samples must follow the requested head pose clearly better than
with the untrained (zero-convolution) CapFace, measured on held-out poses with the same seeds.
About 4 minutes on 2 CPU cores, hence slow.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "learning_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("learning_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_trained_capface_follows_the_requested_pose(monkeypatch):
    # The script reads configs/ relative to the repository root, as the CLI does.
    monkeypatch.chdir(SCRIPT.parents[1])
    check = _load_script()
    # 1400 CapFace steps: with the published mask-head target (hard 0/1 face region on every sample)
    # 700 steps left the trained yaw error at 0.71-0.79x the untrained one; 1400 give about 0.61x.
    settings = check.LearningCheckSettings(vae_steps=400, unet_steps=1200, capface_steps=1400, seed=0, use_mediapipe=False)
    result = check.run_learning_check(settings)
    errors = result.template

    # The readout can tell poses apart: on the VAE round trip of the true render it is far
    # below chance, so differences between the models are pose differences.
    assert errors["floor"].yaw < 0.25 * errors["chance"].yaw
    # Without training, CapFace adds nothing (zero convolutions): the pose comes from the noise
    # seed, so the yaw error is near that of a pose-blind guess.
    assert errors["untrained"].yaw > 0.7 * errors["chance"].yaw
    # The learning claim: at least 30% lower mean |yaw error| after training.
    assert errors["trained"].yaw < 0.7 * errors["untrained"].yaw, check.report(result, settings)
