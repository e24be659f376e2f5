"""The one interface every face recogniser implements.

A recogniser maps aligned face crops to a global identity embedding. CapHuman projects that
embedding to one identity token (Linear(embedding_dim -> 768)), so only ``embedding_dim`` and the
crop it expects matter to the rest of the code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch


class FaceRecognizer(ABC):
    """Global face embedding from aligned crops.

    Subclasses set ``name``, ``embedding_dim`` and ``crop`` (the alignment they need:
    "facenet160" for a 160 px box crop, "arcface112" for the 5-point 112 px template, "dlib150"
    for dlib's own 150 px chip) and implement :meth:`embed`.
    """

    name: str
    embedding_dim: int
    crop: str

    @abstractmethod
    def embed(self, crops: list[np.ndarray]) -> torch.Tensor:
        """Embed aligned crops.

        Args:
            crops: RGB uint8 arrays (H, W, 3), already aligned the way ``crop`` says.
        Returns:
            (N, embedding_dim) float32 tensor on the CPU, L2-normalised where the model's
            published use compares cosine similarities (FaceNet, ArcFace); dlib's embedding is
            returned as is, because its published threshold (0.6) is a Euclidean distance.
        """
