"""A reference photo -> the crops each identity model reads (one ReferenceFace per photo)."""

from __future__ import annotations

import logging

import numpy as np

from caphuman.conditions.identity import ReferenceFace
from caphuman.faces.alignment import arcface_crop, clip_face_crop, facenet_crop
from caphuman.faces.detection import DetectedFace
from caphuman.faces.mesh_mask import face_mask, face_region_mask_from_labels
from caphuman.faces.recognizer import FaceRecognizer

logger = logging.getLogger(__name__)


def recognizer_crop(image: np.ndarray, face: DetectedFace, recognizer: FaceRecognizer) -> np.ndarray:
    """The aligned crop ``recognizer`` expects (its ``crop`` attribute names the alignment)."""
    if recognizer.crop == "arcface112":
        return arcface_crop(image, face).image
    if recognizer.crop == "dlib150":
        return recognizer.chip(image, face)
    return facenet_crop(image, face).image


def face_region(image: np.ndarray, face: DetectedFace, parser=None) -> np.ndarray:
    """(H, W) bool face region: BiSeNet labels when a parser is given, else the mesh's face oval."""
    if parser is not None:
        return face_region_mask_from_labels(parser.parse(image))
    return face_mask(image.shape, face)


def reference_face(image: np.ndarray, face: DetectedFace, recognizer: FaceRecognizer, parser=None, clip_size: int = 224) -> ReferenceFace:
    """Crops of one detected face for the recogniser and for CLIP (non-face painted white)."""
    mask = face_region(image, face, parser)
    return ReferenceFace(
        recognizer_crop=recognizer_crop(image, face, recognizer),
        clip_crop=clip_face_crop(image, face, mask, size=clip_size).image,
    )
