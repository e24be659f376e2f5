"""A tiny, randomly initialised face-recogniser stand-in for tests and CPU smoke runs.

It has the interface and embedding size of a real recogniser, so every code path that needs a
global identity embedding runs without weights. Its embeddings carry no identity information.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from caphuman.faces.recognizer import FaceRecognizer


class TinyFaceRecognizer(FaceRecognizer):
    """Conv net (3 x 32 x 32 -> embedding_dim), seeded, L2-normalised output."""

    name = "tiny"
    crop = "facenet160"
    input_size = 32

    def __init__(self, embedding_dim: int = 512, seed: int = 0):
        self.embedding_dim = embedding_dim
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.network = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, embedding_dim),
        ).eval()
        torch.random.set_rng_state(generator_state)

    @torch.no_grad()
    def embed(self, crops: list[np.ndarray]) -> torch.Tensor:
        pixels = torch.stack([torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1) for crop in crops]).float() / 127.5 - 1.0
        pixels = nn.functional.interpolate(pixels, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        return nn.functional.normalize(self.network(pixels), dim=-1)
