"""Identity similarity: which recogniser scores it, and the cosine between two faces.

The paper scores identity with FaceNet (cosine similarity between the reference's and the
generated face's embeddings). Here the evaluation recogniser is, in order of preference, the
one whose weights are present: FaceNet (as in the paper), ArcFace (ONNX), or dlib (ships in its
pip package, so it always works offline). The report names the one used; numbers from different
recognisers are not comparable (dlib's descriptors are not centred, so even two different people
have a cosine around 0.8-0.9).

A face is cropped for the evaluation recogniser exactly as for the reference
(:func:`caphuman.faces.reference.recognizer_crop` on the largest detected face), so an image
scored against itself gives similarity 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from caphuman.config import IDENTITY_MODELS
from caphuman.errors import CapHumanError
from caphuman.faces.arcface_onnx import ArcFaceOnnxRecognizer
from caphuman.faces.detection import DetectedFace
from caphuman.faces.dlib_recognizer import DlibRecognizer
from caphuman.faces.facenet import FaceNetRecognizer
from caphuman.faces.recognizer import FaceRecognizer
from caphuman.faces.reference import recognizer_crop
from caphuman.weights.registry import default_location, weights_entry, weights_path

logger = logging.getLogger(__name__)


@dataclass
class IdentityModel:
    """The evaluation recogniser and how the report names it.

    Attributes:
        recognizer: the model that embeds aligned crops.
        label: e.g. "FaceNet (VGGFace2) cosine" or "dlib ResNet cosine (offline fallback)".
    """

    recognizer: FaceRecognizer
    label: str

    def embed_face(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """(D,) float64 embedding of one detected face of an RGB uint8 (H, W, 3) image."""
        crop = recognizer_crop(image, face, self.recognizer)
        return self.recognizer.embed([crop])[0].double().numpy()


def resolve_identity_model(choice: str, weights_dir: str | Path, device: torch.device | str = "cpu") -> IdentityModel:
    """The evaluation recogniser for ``choice`` ("auto" picks FaceNet, then ArcFace, then dlib).

    Raises:
        MissingWeightsError: an explicitly chosen model's file is missing.
        CapHumanError: an unknown choice.
    """
    if choice not in IDENTITY_MODELS:
        raise CapHumanError(f"Unknown identity model '{choice}'; choose from {', '.join(IDENTITY_MODELS)}.")
    weights_dir = Path(weights_dir)
    facenet_path = default_location("facenet", weights_dir)
    arcface = weights_entry("arcface")
    arcface_candidates = [weights_path(weights_dir, relative) for relative in (arcface.path, *arcface.alternative_paths)]
    arcface_path = next((path for path in arcface_candidates if path.is_file()), arcface_candidates[0])
    if choice == "facenet" or (choice == "auto" and facenet_path.is_file()):
        return IdentityModel(FaceNetRecognizer.from_file(facenet_path, device=device), "FaceNet (VGGFace2) cosine, as in the paper")
    if choice == "arcface" or (choice == "auto" and arcface_path.is_file()):
        return IdentityModel(ArcFaceOnnxRecognizer.from_file(arcface_path, device=device), f"ArcFace ({arcface_path.name}) cosine")

    if choice == "auto":
        facenet_file = weights_entry("facenet").path
        logger.info("No FaceNet (%s) or ArcFace weights under %s: scoring identity with dlib's recogniser.", facenet_file, weights_dir)
    label = "dlib ResNet cosine" + (" (offline fallback: no FaceNet/ArcFace weights)" if choice == "auto" else "")
    return IdentityModel(DlibRecognizer(), label)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two embeddings (D,) in [-1, 1]; identical directions give 1."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    if denominator == 0.0:
        raise ValueError("cosine similarity of a zero vector is undefined")
    return float(np.clip(np.dot(a, b) / denominator, -1.0, 1.0))


__all__ = ["IdentityModel", "cosine_similarity", "resolve_identity_model"]
