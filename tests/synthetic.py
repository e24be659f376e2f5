"""Small builders shared by tests that make synthetic dataset records."""

from __future__ import annotations

import numpy as np


def empty_head_params(backend: str = "builtin") -> dict:
    """Head parameters of a synthetic record (all zeros), in the record's array layout."""
    params = {name: np.zeros(3, np.float32) for name in ("shape", "expression", "jaw", "rotation", "camera", "albedo")}
    return params | {"lighting": np.zeros((9, 3), np.float32), "backend": np.array(backend)}
