"""Face diversity across seeds: how different the faces of one condition's images are.

For the images of one (method, identity, prompt, head condition) made with different seeds,
diversity is the mean pairwise identity distance, 1 - cosine similarity, over every pair of
images in which a face was found. Identical faces give 0; a method that ignores the seed (or
copies the reference) scores 0, and one whose identity drifts between seeds scores high. It is
a companion to identity similarity, not a goal in itself: high identity similarity with some
diversity means the person is kept while pose, light and context still vary.
"""

from __future__ import annotations

import itertools

import numpy as np


def pairwise_identity_distance(embeddings: list[np.ndarray] | np.ndarray) -> float:
    """Mean of 1 - cos over all unordered pairs of (N, D) embeddings; NaN when N < 2."""
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {vectors.shape}")
    if len(vectors) < 2:
        return float("nan")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0.0):
        raise ValueError("an embedding is the zero vector")
    unit = vectors / norms
    distances = [1.0 - float(np.clip(unit[i] @ unit[j], -1.0, 1.0)) for i, j in itertools.combinations(range(len(unit)), 2)]
    return float(np.mean(distances))


__all__ = ["pairwise_identity_distance"]
