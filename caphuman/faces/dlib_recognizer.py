"""dlib's 128-d face recogniser (ResNet-29, LFW 99.38 %), the one real recogniser that works offline.

Its model files ship in the ``face_recognition_models`` package. That package's import needs
pkg_resources (setuptools < 81), so the files are located on disk instead of importing it.

Pipeline, as dlib intends it: dlib's 5-point shape predictor on the face box, ``get_face_chip``
(150 px, padding 0.25, rotated upright) and the ResNet. Two chips are the same person when the
Euclidean distance of their descriptors is below 0.6 (dlib's published threshold).
"""

from __future__ import annotations

import importlib.util
import logging
import site
import sys
from pathlib import Path

import numpy as np
import torch

from caphuman.errors import MissingWeightsError
from caphuman.faces.detection import DetectedFace
from caphuman.faces.recognizer import FaceRecognizer

logger = logging.getLogger(__name__)

RECOGNITION_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_PREDICTOR_FILES = {5: "shape_predictor_5_face_landmarks.dat", 68: "shape_predictor_68_face_landmarks.dat"}
MODELS_PACKAGE = "face_recognition_models"
INSTALL_HINT = "`pip install face_recognition_models`"

CHIP_SIZE = 150  # the ResNet's input side; dlib.get_face_chip's default
CHIP_PADDING = 0.25  # dlib's default context around the face in the chip
SAME_PERSON_DISTANCE = 0.6  # dlib's published decision threshold on Euclidean distance


def find_models_dir() -> Path | None:
    """The ``models`` folder of the installed face_recognition_models package, without importing it.

    ``importlib.util.find_spec`` on a top-level name only locates the package; it does not run
    its ``__init__`` (which would need pkg_resources). Falls back to scanning site-packages.
    """
    try:
        spec = importlib.util.find_spec(MODELS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    candidates: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(location) / "models" for location in spec.submodule_search_locations)
    search_roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    candidates.extend(Path(root) / MODELS_PACKAGE / "models" for root in search_roots if root)
    for candidate in candidates:
        if (candidate / RECOGNITION_MODEL_FILE).is_file():
            return candidate
    return None


class DlibRecognizer(FaceRecognizer):
    """dlib ResNet face descriptors (128-d, Euclidean; same person below 0.6).

    Args:
        models_dir: folder holding the .dat files; default: the installed
            face_recognition_models package's ``models`` folder.
        landmark_points: 5 (dlib's recommended predictor for chips) or 68.
        num_jitters: >0 averages descriptors of that many randomly jittered chips (dlib's
            option; slower, slightly more accurate, not deterministic).
    Raises:
        MissingWeightsError: a .dat file is not there.
    """

    name = "dlib"
    embedding_dim = 128
    crop = "dlib150"

    def __init__(self, models_dir: str | Path | None = None, landmark_points: int = 5, num_jitters: int = 0):
        if landmark_points not in SHAPE_PREDICTOR_FILES:
            raise ValueError(f"landmark_points must be 5 or 68, got {landmark_points}")
        if num_jitters < 0:
            raise ValueError(f"num_jitters must be >= 0, got {num_jitters}")
        import dlib

        self._dlib = dlib
        self.num_jitters = num_jitters
        folder = Path(models_dir) if models_dir is not None else find_models_dir()
        recognition_path = self._required_file(folder, RECOGNITION_MODEL_FILE, "dlib face recognition model")
        predictor_path = self._required_file(folder, SHAPE_PREDICTOR_FILES[landmark_points], f"dlib {landmark_points}-point shape predictor")
        self._shape_predictor = dlib.shape_predictor(str(predictor_path))
        self._resnet = dlib.face_recognition_model_v1(str(recognition_path))
        logger.debug("Loaded dlib recogniser from %s", recognition_path.parent)

    @staticmethod
    def _required_file(folder: Path | None, file_name: str, what: str) -> Path:
        if folder is None:
            expected = f"site-packages/{MODELS_PACKAGE}/models/{file_name}"
            raise MissingWeightsError(f"{what} '{file_name}'", expected, INSTALL_HINT)
        path = folder / file_name
        if not path.is_file():
            raise MissingWeightsError(f"{what} '{file_name}'", str(path), INSTALL_HINT)
        return path

    def landmarks(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """dlib's own shape-predictor points inside the face box.

        Returns:
            (5, 2) or (68, 2) float32 pixel coordinates. 5-point order: image-right eye outer
            and inner corner, image-left eye outer and inner corner, base of the nose.
        """
        shape = self._shape(image, face)
        return np.array([(point.x, point.y) for point in shape.parts()], dtype=np.float32)

    def chip(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """dlib's aligned face chip (the "dlib150" crop).

        Args:
            image: (H, W, 3) uint8 RGB.
            face: detected face; only its box is used, dlib places its own landmarks.
        Returns:
            (150, 150, 3) uint8 RGB, face rotated upright, padding 0.25.
        """
        image = _check_rgb_uint8(image)
        shape = self._shape(image, face)
        return np.asarray(self._dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING))

    def embed(self, crops: list[np.ndarray]) -> torch.Tensor:
        """Descriptors of dlib chips.

        Args:
            crops: (150, 150, 3) uint8 RGB chips from :meth:`chip` (or dlib.get_face_chip).
        Returns:
            (N, 128) float32 tensor, not normalised (dlib's threshold is a Euclidean distance).
        """
        if not crops:
            return torch.zeros((0, self.embedding_dim), dtype=torch.float32)
        chips = []
        for index, crop in enumerate(crops):
            crop = np.asarray(crop)
            if crop.shape != (CHIP_SIZE, CHIP_SIZE, 3) or crop.dtype != np.uint8:
                raise ValueError(f"crop {index} must be a ({CHIP_SIZE}, {CHIP_SIZE}, 3) uint8 dlib chip, got {crop.shape} {crop.dtype}")
            chips.append(np.ascontiguousarray(crop))
        descriptors = self._resnet.compute_face_descriptor(chips, self.num_jitters)
        return torch.tensor(np.array([np.asarray(d) for d in descriptors]), dtype=torch.float32)

    def embed_image(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """Descriptor of one face of a photo (landmarks, chip, ResNet).

        Returns:
            (128,) float32 descriptor.
        """
        return self.embed([self.chip(image, face)])[0].numpy()

    @staticmethod
    def distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
        """Euclidean distance between two descriptors; below 0.6 means the same person."""
        return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))

    def _shape(self, image: np.ndarray, face: DetectedFace):
        x0, y0, x1, y1 = face.box
        rectangle = self._dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
        return self._shape_predictor(_check_rgb_uint8(image), rectangle)


def _check_rgb_uint8(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    # dlib's pybind layer needs a C-contiguous buffer (a flipped view is not).
    return np.ascontiguousarray(image)
