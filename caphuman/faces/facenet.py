"""FaceNet (Inception-ResNet-v1, VGGFace2) identity embeddings, the recogniser CapHuman released.

The published CapHuman code embeds the reference face with facenet-pytorch's
``InceptionResnetV1(pretrained="vggface2")``: David Sandberg's TensorFlow FaceNet model
``20180402-114759`` (trained on VGGFace2, 8631 identities), converted to a PyTorch state dict
and published as ``20180402-114759-vggface2.pt``. We build that same class from facenet-pytorch
(the official code's own dependency, pinned to its 2.5.3) WITHOUT ``pretrained`` (which would
download), and load the user's file through :func:`caphuman.weights.files.read_state_dict`
(``weights_only=True``) with every name and shape checked by
:func:`caphuman.weights.strict.load_checked` (``conv2d_1a.conv.weight``,
``repeat_1.0.branch0.conv.weight``, ``mixed_6a.branch1.2.bn.running_var``, ``block8.conv2d.bias``,
``last_linear.weight``, ``last_bn.running_mean`` ...). The file's VGGFace2 classifier ``logits.*`` is not needed for
embeddings and is dropped; a file without it loads too.

Input: RGB, 160x160 face crop (facenet-pytorch's MTCNN crop), "prewhitened" as
(x - 127.5) / 128 (facenet-pytorch's ``fixed_image_standardization``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from caphuman.faces.recognizer import FaceRecognizer
from caphuman.weights.files import read_state_dict, without_data_parallel_prefix
from caphuman.weights.registry import weights_entry
from caphuman.weights.strict import is_batchnorm_counter, load_checked

logger = logging.getLogger(__name__)

VGGFACE2_NUM_IDENTITIES = 8631
FACENET_EMBEDDING_DIM = 512
FACENET_INPUT_SIZE = 160


def facenet_architecture() -> nn.Module:
    """facenet-pytorch's InceptionResnetV1 embedding network, random weights (nothing downloaded).

    Its forward takes (N, 3, 160, 160) prewhitened RGB and returns (N, 512) L2-normalised
    embeddings (the ``last_bn`` output, normalised).
    """
    from facenet_pytorch import InceptionResnetV1

    return InceptionResnetV1(pretrained=None, classify=False).eval()


def prewhiten(crops: Sequence[np.ndarray], size: int = FACENET_INPUT_SIZE) -> torch.Tensor:
    """RGB uint8 crops (size, size, 3) -> (N, 3, size, size) float32, (x - 127.5) / 128."""
    for index, crop in enumerate(crops):
        if crop.shape != (size, size, 3) or crop.dtype != np.uint8:
            raise ValueError(f"FaceNet crop {index} is {crop.shape} {crop.dtype}; expected ({size}, {size}, 3) uint8.")
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
    return (batch - 127.5) / 128.0


class FaceNetRecognizer(FaceRecognizer):
    """512-d L2-normalised FaceNet (VGGFace2) embeddings from 160 px RGB crops."""

    name = "facenet"
    embedding_dim = FACENET_EMBEDDING_DIM
    crop = "facenet160"

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", batch_size: int = 32):
        """``model``: an embedding network, e.g. :func:`facenet_architecture` with weights loaded."""
        if getattr(model, "classify", False):
            raise ValueError("FaceNetRecognizer needs InceptionResnetV1(classify=False): a classifier returns logits, not embeddings.")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> FaceNetRecognizer:
        """Load ``20180402-114759-vggface2.pt`` (or the same tensors as ``.safetensors``).

        The ``logits`` classifier is dropped when present (embeddings do not use it).

        Raises:
            MissingWeightsError: no file at ``path``.
            CapHumanError: the file is unreadable or its names/shapes are not FaceNet's.
        """
        what = "FaceNet VGGFace2 weights"
        state_dict = without_data_parallel_prefix(read_state_dict(path, what=what, source=weights_entry("facenet").source))
        embedding_state = {key: value for key, value in state_dict.items() if not key.startswith("logits.")}
        model = load_checked(facenet_architecture(), embedding_state, path, what, may_lack=is_batchnorm_counter)
        logger.info("Loaded FaceNet weights from %s", path)
        return cls(model, device=device)

    @torch.inference_mode()
    def embed(self, crops: list[np.ndarray]) -> torch.Tensor:
        """(N, 512) float32 CPU tensor of unit-norm embeddings for RGB uint8 160x160 crops."""
        if not crops:
            return torch.zeros(0, self.embedding_dim)
        chunks = []
        for start in range(0, len(crops), self.batch_size):
            batch = prewhiten(crops[start : start + self.batch_size]).to(self.device)
            chunks.append(F.normalize(self.model(batch).float(), dim=1).cpu())
        return torch.cat(chunks)
