"""Drawing the pose map the OpenPose ControlNet reads: OpenPose's body and hand drawing plus
CapHuman's face dots.

Drawing facts (from the official code: ControlNet's annotator ``draw_bodypose`` /
``draw_handpose`` and CapHuman's ``draw_facepose``), written anew here:

- body: each found joint i is a filled circle of radius 4 in ``BODY_COLORS[i]``; then each of
  the first 17 limbs of ``LIMBS`` (the list has 19; OpenPose's drawing stops at 17, leaving out
  the two shoulder-ear links) is a filled ellipse along the limb (half-length = half the limb,
  half-width ``STICK_WIDTH`` = 4) in ``BODY_COLORS[limb]``, blended as 0.4 x canvas + 0.6 x
  colour, so a limb on black is 0.6 of its colour and the joints stay full colour where no limb
  covers them.
- hands: each of 20 edges is a 2-px line in the HSV colour (edge / 20, 1, 1); every point is then
  a filled radius-4 circle of (0, 0, 255).
- face: each of the 68 face landmarks is a filled white circle of radius 3.
- The layers are summed (the official code adds the body map and the face map, both in [0, 1],
  as tensors); here the sum saturates at 255 because a map is an 8-bit image. The two differ only
  on the few pixels where a white face dot overlaps a body joint (eyes, nose, ears).

The colours are RGB as the ControlNet saw them in training. Coordinates are truncated to whole
pixels, as OpenPose's drawing does.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from caphuman.body.keypoints import NUM_BODY_POINTS, BodyKeypoints
from caphuman.config import BODY_MODES, DEFAULT_BODY_MODES
from caphuman.errors import CapHumanError

STICK_WIDTH = 4
JOINT_RADIUS = 4
HAND_POINT_RADIUS = 4
HAND_LINE_WIDTH = 2
FACE_DOT_RADIUS = 3
LIMB_BLEND = 0.6  # weight of a limb's colour over what is already drawn
NUM_DRAWN_LIMBS = 17

# OpenPose's limbs as pairs of COCO-18 joint indices (0-based).
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
    (2, 16),
    (5, 17),
)
# RGB colour of joint i and of limb i.
BODY_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)
HAND_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 4),
    (0, 5),
    (5, 6),
    (6, 7),
    (7, 8),
    (0, 9),
    (9, 10),
    (10, 11),
    (11, 12),
    (0, 13),
    (13, 14),
    (14, 15),
    (15, 16),
    (0, 17),
    (17, 18),
    (18, 19),
    (19, 20),
)
HAND_POINT_COLOR = (0, 0, 255)
FACE_DOT_COLOR = (255, 255, 255)


def hand_edge_color(edge_index: int) -> tuple[int, int, int]:
    """RGB colour of hand edge ``edge_index``: hue edge / 20 at full saturation and value."""
    red, green, blue = colorsys.hsv_to_rgb(edge_index / float(len(HAND_EDGES)), 1.0, 1.0)
    return (round(red * 255), round(green * 255), round(blue * 255))


def parse_body_modes(modes: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Parse "face,body,hand" (or a list) into a tuple of known layers; unknown names are an error."""
    items = [m.strip() for m in modes.split(",")] if isinstance(modes, str) else [str(m).strip() for m in modes]
    items = [m for m in items if m]
    unknown = [m for m in items if m not in BODY_MODES]
    if unknown:
        raise CapHumanError(f"Unknown body-map mode(s) {unknown}; choose from {', '.join(BODY_MODES)}.")
    if not items:
        raise CapHumanError(f"No body-map mode given; choose from {', '.join(BODY_MODES)}.")
    return tuple(dict.fromkeys(items))


def draw_body(canvas: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """OpenPose's body drawing on an (H, W, 3) uint8 canvas; ``joints`` (18, 2) pixels, NaN = missing."""
    found = ~np.isnan(joints).any(axis=1)
    for index in range(NUM_BODY_POINTS):
        if found[index]:
            x, y = joints[index]
            cv2.circle(canvas, (int(x), int(y)), JOINT_RADIUS, BODY_COLORS[index], thickness=-1)
    for limb_index, (start, end) in enumerate(LIMBS[:NUM_DRAWN_LIMBS]):
        if not (found[start] and found[end]):
            continue
        (x0, y0), (x1, y1) = joints[start], joints[end]
        length = math.hypot(x0 - x1, y0 - y1)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        centre = (int((x0 + x1) / 2.0), int((y0 + y1) / 2.0))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
        limb = canvas.copy()
        cv2.fillConvexPoly(limb, polygon, BODY_COLORS[limb_index])
        canvas = cv2.addWeighted(canvas, 1.0 - LIMB_BLEND, limb, LIMB_BLEND, 0)
    return canvas


def draw_hands(canvas: np.ndarray, hands: list[np.ndarray]) -> np.ndarray:
    """OpenPose's hand drawing; each hand (21, 2) in pixels."""
    for hand in hands:
        points = [(int(x), int(y)) for x, y in hand]
        for edge_index, (start, end) in enumerate(HAND_EDGES):
            cv2.line(canvas, points[start], points[end], hand_edge_color(edge_index), thickness=HAND_LINE_WIDTH)
        for point in points:
            cv2.circle(canvas, point, HAND_POINT_RADIUS, HAND_POINT_COLOR, thickness=-1)
    return canvas


def draw_face(canvas: np.ndarray, points: np.ndarray) -> np.ndarray:
    """CapHuman's face drawing: a white dot per landmark; ``points`` (N, 2) in pixels. As in the
    official code, points at or left of / above pixel 0 are left out."""
    for x, y in np.asarray(points, dtype=np.float64):
        column, row = int(x), int(y)
        if column > 0 and row > 0:
            cv2.circle(canvas, (column, row), FACE_DOT_RADIUS, FACE_DOT_COLOR, thickness=-1)
    return canvas


def draw_openpose_map(
    keypoints: BodyKeypoints | None,
    face_points: np.ndarray | None,
    height: int,
    width: int,
    modes: str | list[str] | tuple[str, ...] = DEFAULT_BODY_MODES,
) -> np.ndarray:
    """The OpenPose ControlNet's condition image.

    Args:
        keypoints: body (and hand) keypoints normalised to the frame (see
            caphuman/body/keypoints.py); None draws no body or hands.
        face_points: (68, 2) face landmarks normalised the same way (x = column / width,
            y = row / height), e.g. :func:`caphuman.head.landmarks.face_points`; None: no face dots.
        height, width: the map's size in pixels (the image's size).
        modes: layers to draw: "face", "body", "hand" (comma string or list).

    Returns:
        (height, width, 3) uint8 RGB map on black.
    """
    layers = parse_body_modes(modes)
    if height <= 0 or width <= 0:
        raise ValueError(f"map size must be positive, got {height}x{width}.")
    scale = np.array([width, height], dtype=np.float64)
    skeleton = np.zeros((height, width, 3), dtype=np.uint8)
    if keypoints is not None and "body" in layers:
        skeleton = draw_body(skeleton, keypoints.body.astype(np.float64) * scale)
    if keypoints is not None and "hand" in layers:
        skeleton = draw_hands(skeleton, [hand.astype(np.float64) * scale for hand in keypoints.hands])
    if face_points is None or "face" not in layers:
        return skeleton
    face = draw_face(np.zeros((height, width, 3), dtype=np.uint8), np.asarray(face_points, dtype=np.float64) * scale)
    return cv2.add(skeleton, face)  # saturating sum of the two layers (see module docstring)


__all__ = [
    "BODY_COLORS",
    "HAND_EDGES",
    "LIMBS",
    "draw_body",
    "draw_face",
    "draw_hands",
    "draw_openpose_map",
    "hand_edge_color",
    "parse_body_modes",
]
