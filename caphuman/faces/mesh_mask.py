"""Face-region masks: from the mediapipe mesh (offline) or from a BiSeNet parsing.

CapHuman needs the face region twice: to paint non-face pixels white before CLIP sees the
reference, and as the training target of the face-mask head. The published system takes it from
a BiSeNet face parser (CelebAMask-HQ's 19 classes); :func:`face_region_mask_from_labels` turns
such a label map into the region. Without those weights, :func:`face_mask` fills the face oval
of the 478-point mesh: skin, brows, eyes, nose and mouth, and no hair, ears, neck or background.
Known difference: the oval's top follows the mesh's forehead line, so fringe hair that covers
the forehead is inside it (a parser would label it hair).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from caphuman.faces.detection import DetectedFace

# CelebAMask-HQ class ids as BiSeNet face parsers number them: 0 background, 1 skin, 2 l_brow,
# 3 r_brow, 4 l_eye, 5 r_eye, 6 eye_g (glasses), 7 l_ear, 8 r_ear, 9 ear_r (earring), 10 nose,
# 11 mouth, 12 u_lip, 13 l_lip, 14 neck, 15 neck_l (necklace), 16 cloth, 17 hair, 18 hat.
# CapHuman paints exactly these classes white; everything else is face.
NON_FACE_LABELS = (0, 7, 8, 9, 14, 15, 16, 17, 18)
NUM_PARSING_CLASSES = 19

# Sub-pixel precision for cv2.fillPoly (coordinates scaled by 2**_FILL_SHIFT), so the mask
# boundary follows the mesh points rather than rounding them to whole pixels.
_FILL_SHIFT = 4


@lru_cache(maxsize=1)
def face_oval_indices() -> tuple[int, ...]:
    """Mesh indices of the face outline, in order around the face (36 points).

    mediapipe publishes the outline as an unordered set of edges (FACEMESH_FACE_OVAL); walking
    them from point to neighbouring point gives the polygon.
    """
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    neighbours: dict[int, list[int]] = {}
    for start, end in FACEMESH_FACE_OVAL:
        neighbours.setdefault(start, []).append(end)
        neighbours.setdefault(end, []).append(start)
    if any(len(adjacent) != 2 for adjacent in neighbours.values()):
        raise RuntimeError("mediapipe's FACEMESH_FACE_OVAL is not a single closed loop")
    first = min(neighbours)
    order = [first]
    previous, current = None, first
    while True:
        following = next(n for n in neighbours[current] if n != previous)
        if following == first:
            break
        order.append(following)
        previous, current = current, following
    if len(order) != len(neighbours):
        raise RuntimeError("mediapipe's FACEMESH_FACE_OVAL is not a single closed loop")
    return tuple(order)


def face_mask(image_shape: tuple[int, ...], face: DetectedFace) -> np.ndarray:
    """Face-region mask from the mesh's face oval.

    Args:
        image_shape: (H, W) or (H, W, C) of the photo the face was detected in.
        face: the detected face (landmarks in that photo's pixels).
    Returns:
        (H, W) bool, True inside the face oval (clipped to the image).
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    outline = face.landmarks[list(face_oval_indices()), :2].astype(np.float64)
    fixed_point = np.round(outline * (1 << _FILL_SHIFT)).astype(np.int32)
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, [fixed_point.reshape(-1, 1, 2)], color=1, lineType=cv2.LINE_8, shift=_FILL_SHIFT)
    return canvas.astype(bool)


def face_region_mask_from_labels(labels: np.ndarray) -> np.ndarray:
    """Face region of a 19-class CelebAMask-HQ parsing (the classes CapHuman keeps).

    Args:
        labels: (H, W) integer label map with values in 0..18.
    Returns:
        (H, W) bool, False on background, ears, earrings, neck, necklace, clothes, hair and hat.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected integer class labels, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_PARSING_CLASSES):
        raise ValueError(f"labels must lie in 0..{NUM_PARSING_CLASSES - 1}, got {labels.min()}..{labels.max()}")
    return ~np.isin(labels, NON_FACE_LABELS)
