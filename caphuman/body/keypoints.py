"""Body and hand keypoints in OpenPose's layout, from mediapipe's pose and hand models.

The official CapHuman code runs ControlNet's OpenPose annotator (CMU's body and hand networks,
downloaded on first use). Here the keypoints come from mediapipe's BlazePose (33 points) and hand
landmark (21 points per hand) models, whose .tflite files ship inside the mediapipe wheel, so no
download is needed; they are then expressed in OpenPose's layouts:

- body: OpenPose's 18-point COCO order (0 nose, 1 neck, 2-4 right shoulder/elbow/wrist, 5-7 left
  shoulder/elbow/wrist, 8-10 right hip/knee/ankle, 11-13 left hip/knee/ankle, 14/15 right/left
  eye, 16/17 right/left ear). OpenPose has a neck joint and BlazePose has not: the neck is the
  midpoint of the shoulders (OpenPose's neck sits there too). "Right" is the person's right.
- hands: 21 points in the same order in both (wrist, then thumb, index, middle, ring, little
  finger from base to tip), so they are used as they are.

Coordinates are normalised to the photo: x = column / width, y = row / height, both in [0, 1],
y down, so a map can be drawn at any size. One person (the one BlazePose finds) is kept; OpenPose
would find everyone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from caphuman.errors import InputImageError
from caphuman.quiet import native_stderr_silenced, open_mediapipe_solution

NUM_BODY_POINTS = 18
NUM_HAND_POINTS = 21
NECK = 1

# OpenPose COCO-18 index -> BlazePose index (None: the neck, made from the two shoulders).
OPENPOSE_FROM_BLAZEPOSE: tuple[int | None, ...] = (
    0,  # nose
    None,  # neck
    12,
    14,
    16,  # right shoulder, elbow, wrist
    11,
    13,
    15,  # left shoulder, elbow, wrist
    24,
    26,
    28,  # right hip, knee, ankle
    23,
    25,
    27,  # left hip, knee, ankle
    5,
    2,  # right eye, left eye
    8,
    7,  # right ear, left ear
)
BLAZEPOSE_SHOULDERS = (11, 12)

# A joint counts as found when BlazePose's visibility (the chance that it is in view and not
# occluded) reaches this, as OpenPose leaves out joints it does not see rather than guessing.
DEFAULT_MIN_VISIBILITY = 0.5


@dataclass
class BodyKeypoints:
    """One person's keypoints in OpenPose's layout, normalised to the photo (see module docstring).

    Attributes:
        body: (18, 2) float32 x, y in [0, 1]; NaN for joints that were not found.
        hands: a (21, 2) float32 array per detected hand, same coordinates.
        image_size: (height, width) of the photo the points were found on.
    """

    body: np.ndarray
    hands: list[np.ndarray] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)

    @property
    def found(self) -> np.ndarray:
        """(18,) bool: which body joints were found."""
        return ~np.isnan(self.body).any(axis=1)

    def pixels(self, height: int, width: int) -> np.ndarray:
        """(18, 2) body joints in pixels of a (height, width) canvas (NaN where missing)."""
        return self.body * np.array([width, height], dtype=np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputImageError(f"Expected an RGB uint8 (H, W, 3) photo for body keypoints, got {getattr(image, 'shape', type(image))}.")
    # mediapipe needs a C-contiguous buffer (flipped or cropped views are not).
    return np.ascontiguousarray(image)


def openpose_body_from_blazepose(landmarks: np.ndarray, visibility: np.ndarray, min_visibility: float = DEFAULT_MIN_VISIBILITY) -> np.ndarray:
    """BlazePose's 33 normalised points -> OpenPose's 18 (NaN where not visible or outside the photo).

    Args:
        landmarks: (33, 2) x, y normalised to the photo.
        visibility: (33,) BlazePose visibility scores in [0, 1].
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    inside = np.all((landmarks >= 0.0) & (landmarks <= 1.0), axis=1)
    usable = inside & (np.asarray(visibility) >= min_visibility)
    body = np.full((NUM_BODY_POINTS, 2), np.nan, dtype=np.float32)
    for openpose_index, blazepose_index in enumerate(OPENPOSE_FROM_BLAZEPOSE):
        if blazepose_index is not None and usable[blazepose_index]:
            body[openpose_index] = landmarks[blazepose_index]
    left, right = BLAZEPOSE_SHOULDERS
    if usable[left] and usable[right]:
        body[NECK] = (landmarks[left] + landmarks[right]) / 2.0
    return body


class BodyKeypointDetector:
    """Reusable mediapipe pose + hands graphs for still photos (close() or use as a context manager).

    Args:
        hands: also run the hand landmark model.
        min_visibility: see :data:`DEFAULT_MIN_VISIBILITY`.
    """

    def __init__(self, hands: bool = True, min_visibility: float = DEFAULT_MIN_VISIBILITY):
        import mediapipe as mp

        # mediapipe's C++ logs go straight to stderr: silenced in CLI runs (caphuman.quiet).
        self._quiet = native_stderr_silenced
        self.min_visibility = float(min_visibility)
        # model_complexity=1 is the "full" pose model, the one whose .tflite ships in the wheel
        # (0 and 2 would be fetched from the network on first use).
        self._pose = open_mediapipe_solution(lambda: mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, min_detection_confidence=0.5))
        self._hands = (
            open_mediapipe_solution(
                lambda: mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=2, model_complexity=1, min_detection_confidence=0.5)
            )
            if hands
            else None
        )

    def __call__(self, image: np.ndarray) -> BodyKeypoints:
        """Keypoints of the person in an RGB uint8 (H, W, 3) photo; all-NaN body when nobody is found."""
        image = _check_image(image)
        height, width = image.shape[:2]
        body = np.full((NUM_BODY_POINTS, 2), np.nan, dtype=np.float32)
        with self._quiet():
            result = self._pose.process(image)
        if result.pose_landmarks is not None:
            points = result.pose_landmarks.landmark
            landmarks = np.array([[p.x, p.y] for p in points], dtype=np.float32)
            visibility = np.array([p.visibility for p in points], dtype=np.float32)
            body = openpose_body_from_blazepose(landmarks, visibility, self.min_visibility)
        hands: list[np.ndarray] = []
        if self._hands is not None:
            with self._quiet():
                found = self._hands.process(image)
            for hand in found.multi_hand_landmarks or []:
                hands.append(np.array([[p.x, p.y] for p in hand.landmark], dtype=np.float32))
        return BodyKeypoints(body=body, hands=hands, image_size=(height, width))

    def close(self) -> None:
        """Release the mediapipe graphs (idempotent)."""
        for graph in (self._pose, self._hands):
            if graph is not None:
                with self._quiet():
                    graph.close()
        self._pose = self._hands = None

    def __enter__(self) -> BodyKeypointDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def body_keypoints(image: np.ndarray, hands: bool = True) -> BodyKeypoints:
    """One-off: keypoints of the person in an RGB uint8 (H, W, 3) photo (see :class:`BodyKeypointDetector`)."""
    with BodyKeypointDetector(hands=hands) as detector:
        return detector(image)


__all__ = [
    "BodyKeypointDetector",
    "BodyKeypoints",
    "NUM_BODY_POINTS",
    "NUM_HAND_POINTS",
    "OPENPOSE_FROM_BLAZEPOSE",
    "body_keypoints",
    "openpose_body_from_blazepose",
]
