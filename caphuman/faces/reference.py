"""The aligned crop a face recogniser reads, cut from a detected face.

Reference photos go through :class:`caphuman.session.CapHumanSession` (which uses facenet-pytorch's
MTCNN crop for FaceNet, as released); this mesh-based version serves generated images in the
evaluation metrics, which are detected by our own detector.
"""

from __future__ import annotations

import numpy as np

from caphuman.faces.alignment import arcface_crop, facenet_crop
from caphuman.faces.detection import DetectedFace
from caphuman.faces.recognizer import FaceRecognizer


def recognizer_crop(image: np.ndarray, face: DetectedFace, recognizer: FaceRecognizer) -> np.ndarray:
    """The aligned crop ``recognizer`` expects (its ``crop`` attribute names the alignment)."""
    if recognizer.crop == "arcface112":
        return arcface_crop(image, face).image
    if recognizer.crop == "dlib150":
        return recognizer.chip(image, face)
    return facenet_crop(image, face).image
