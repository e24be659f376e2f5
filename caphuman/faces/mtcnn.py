"""FaceNet's input the way the published CapHuman code makes it: facenet-pytorch's MTCNN crop.

The official ``inference.py`` runs ``MTCNN(image_size=160)`` (margin 0, the largest face) on the
reference photo: the detector's box, NOT made square, is cut from the photo and resized to
160 x 160 with PIL's bilinear filter (a non-square box is stretched), then prewhitened as
(x - 127.5) / 128 (``fixed_image_standardization``) for InceptionResnetV1. This module returns the
160 x 160 uint8 crop (before prewhitening), so it can be saved, inspected and fed to
:class:`~caphuman.faces.facenet.FaceNetRecognizer`, which applies the same standardisation.

facenet-pytorch's wheel ships the P/R/O-Net weights, so this works offline. Its box extraction
(``extract_face``) is called as the official code calls it, on a PIL image.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

# The official script's MTCNN settings (facenet-pytorch defaults except image_size).
MTCNN_IMAGE_SIZE = 160
MTCNN_MARGIN = 0


def box_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union if union > 0 else 0.0


class MtcnnCropper:
    """facenet-pytorch's MTCNN, used only to find and cut FaceNet's 160 px input.

    Args:
        device: where the three small detector networks run.
        image_size: crop side (160 for FaceNet).
        margin: MTCNN's margin in output pixels (0 in the official script).
    """

    def __init__(self, device: str | torch.device = "cpu", image_size: int = MTCNN_IMAGE_SIZE, margin: int = MTCNN_MARGIN):
        from facenet_pytorch import MTCNN

        self.image_size = image_size
        self.margin = margin
        # select_largest=True (the default) orders the boxes largest first, as the official
        # MTCNN(image_size=160) picks its face.
        self.mtcnn = MTCNN(image_size=image_size, margin=margin, select_largest=True, device=torch.device(device))

    def boxes(self, image: np.ndarray) -> np.ndarray:
        """(N, 4) float boxes (x0, y0, x1, y1) in pixels, largest first; (0, 4) when none."""
        boxes, _ = self.mtcnn.detect(Image.fromarray(image))
        if boxes is None:
            return np.zeros((0, 4))
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    def crop(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(image_size, image_size, 3) uint8: the box cut and resized exactly as MTCNN does."""
        from facenet_pytorch.models.utils.detect_face import extract_face

        # extract_face resizes PIL images with PIL's bilinear filter, as the official code (which
        # passes a PIL image) gets; numpy input would take OpenCV's area filter instead.
        face = extract_face(Image.fromarray(image), np.asarray(box), self.image_size, self.margin)
        # The tensor holds the resized uint8 values as floats; the cast is exact.
        return face.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    def facenet_input(self, image: np.ndarray, near_box: tuple[float, float, float, float] | None = None) -> np.ndarray | None:
        """FaceNet's 160 px input for one photo, or None when MTCNN finds no face.

        Args:
            image: (H, W, 3) uint8 RGB photo.
            near_box: None takes the largest MTCNN face (the official choice); a box (from our
                own detector, for ``--face-index`` > 0) takes the MTCNN face overlapping it most.
        """
        boxes = self.boxes(image)
        if len(boxes) == 0:
            return None
        if near_box is None:
            chosen = boxes[0]
        else:
            overlaps = [box_overlap(tuple(box), near_box) for box in boxes]
            best = int(np.argmax(overlaps))
            if overlaps[best] <= 0.0:
                return None
            chosen = boxes[best]
        return self.crop(image, chosen)
