"""The built-in model's expression basis, built geometrically from the mean face's regions.

Each field is a (V, 3) displacement (cm) per unit coefficient, one per name in
:data:`EXPRESSION_NAMES`, made from the mean mesh's semantic regions (mediapipe's lip, eye and
brow contours, and the anchor points below) with smooth fall-off: anchors are moved by hand
(e.g. the mouth corners 0.6 cm up for ``mouth_corners_up``), pinned points stay, and the rest
follows by Gaussian-weighted interpolation (:func:`_smooth_field`). The lip regions are also
what the model's jaw skinning splits the face at (:func:`lip_regions`).
"""

from __future__ import annotations

import math

import numpy as np

# mediapipe face-mesh indices used as semantic anchors (the same on every face). "Right" and
# "left" are the subject's: the subject's right eye is on the image's left (x < 0).
MOUTH_CORNERS_OUTER = (61, 291)
MOUTH_CORNERS_INNER = (78, 308)
UPPER_LIP_CENTRE = (0, 13)  # outer, inner
LOWER_LIP_CENTRE = (17, 14)  # outer, inner
NOSE_TIP = 1
CHIN = 152
RIGHT_EYE_CORNERS = (33, 133)  # outer, inner
LEFT_EYE_CORNERS = (263, 362)

EXPRESSION_NAMES: tuple[str, ...] = (
    "mouth_stretch",  # mouth corners pulled sideways (wide mouth)
    "mouth_corners_up",  # corners raised (smile); negative values pull them down (frown)
    "lip_pucker",  # lips pushed forward and together
    "lips_part",  # lips apart without opening the jaw
    "eye_close_right",  # subject's right upper eyelid down onto the lower one (1 = closed)
    "eye_close_left",
    "brow_raise",  # both eyebrows up
    "brow_lower",  # eyebrows down and together (frown)
)

# A lip vertex lies less than this far behind the mouth corners (the box test in lip_regions must
# not catch points of the cheeks or jaw that project into the lip box from behind).
_LIP_DEPTH_BEHIND_CORNERS_CM = 1.3


def lip_regions(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean (V,) masks of the upper lip, the lower lip, and the lips' meeting height (V,).

    The lips are the vertices inside mediapipe's outer lip contour. A lip vertex belongs to the
    lower lip when it is below the line where the inner contours meet: the mid-height of the
    upper and lower inner lip centres, bent up to the inner mouth corners.
    """
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_LIPS

    contour = sorted({index for edge in FACEMESH_LIPS for index in edge})
    corner_left, corner_right = (vertices[i] for i in MOUTH_CORNERS_OUTER)
    meeting = _lip_meeting_height(vertices, vertices[:, 0])
    # Inside the outer contour: within the corners in x and between the outer lip centres in y,
    # plus every contour point. The outer contour is convex enough for this box-and-line test.
    x, y = vertices[:, 0], vertices[:, 1]
    top = vertices[UPPER_LIP_CENTRE[0], 1]
    bottom = vertices[LOWER_LIP_CENTRE[0], 1]
    half_width = (corner_right[0] - corner_left[0]) / 2.0
    # The lip band narrows towards the corners like an ellipse.
    taper = np.sqrt(np.clip(1.0 - (x / half_width) ** 2, 0.0, 1.0))
    upper_bound = meeting + (top - meeting) * taper + 0.05
    lower_bound = meeting + (bottom - meeting) * taper - 0.05
    depth_limit = vertices[list(MOUTH_CORNERS_OUTER), 2].mean() - _LIP_DEPTH_BEHIND_CORNERS_CM
    inside = (np.abs(x) <= half_width + 1e-6) & (y <= upper_bound) & (y >= lower_bound) & (vertices[:, 2] > depth_limit)
    lips = inside.copy()
    lips[contour] = True
    lower = lips & (y < meeting)
    upper = lips & ~lower
    return upper, lower, meeting


def _lip_meeting_height(vertices: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Height (cm) of the line where the lips meet, at horizontal positions ``x``."""
    centre = (vertices[UPPER_LIP_CENTRE[1], 1] + vertices[LOWER_LIP_CENTRE[1], 1]) / 2.0
    corner = vertices[list(MOUTH_CORNERS_INNER), 1].mean()
    half_width = abs(vertices[MOUTH_CORNERS_INNER[1], 0])
    # A parabola through the centre and the inner corners, flat beyond the corners.
    t = np.clip(np.abs(x) / half_width, 0.0, 1.0)
    return centre + (corner - centre) * t**2


def _smooth_field(
    vertices: np.ndarray,
    anchors: np.ndarray,
    anchor_displacements: np.ndarray,
    radius: float,
) -> np.ndarray:
    """Displacement field that follows the anchors near them and fades to zero away from them.

    Shepard interpolation with Gaussian weights g = exp(-d^2 / (2 radius^2)) plus one implicit
    zero-displacement anchor at distance 2.5 * radius from every vertex, so vertices far from all
    anchors stay put. Anchors with zero displacement pin their neighbourhood.

    Args:
        vertices: (V, 3) model vertices.
        anchors: (K,) vertex indices.
        anchor_displacements: (K, 3) displacement of each anchor.
        radius: Gaussian radius in cm.

    Returns:
        (V, 3) displacements.
    """
    distance_sq = ((vertices[:, None, :] - vertices[anchors][None, :, :]) ** 2).sum(-1)  # (V, K)
    weights = np.exp(-distance_sq / (2.0 * radius**2))
    background = math.exp(-(2.5**2) / 2.0)
    field = weights @ anchor_displacements / (weights.sum(axis=1, keepdims=True) + background)
    # Anchors keep exactly their own displacement.
    field[anchors] = anchor_displacements
    return field


def _indices_of(connections: frozenset) -> np.ndarray:
    return np.array(sorted({index for edge in connections for index in edge}), dtype=np.int64)


def _eye_close_field(vertices: np.ndarray, eye: np.ndarray, corners: tuple[int, int], brow: np.ndarray) -> np.ndarray:
    """Upper eyelid points move onto the lower lid at the same x; the lower lid and brow stay."""
    outer, inner = vertices[corners[0]], vertices[corners[1]]
    slope = (inner[1] - outer[1]) / (inner[0] - outer[0])

    def corner_line(x: np.ndarray) -> np.ndarray:
        return outer[1] + slope * (x - outer[0])

    contour = vertices[eye]
    above = contour[:, 1] > corner_line(contour[:, 0]) + 1e-6
    upper_lid, lower_lid = eye[above], eye[~above]  # corners count as lower lid: they stay
    order = np.argsort(vertices[lower_lid, 0])
    lower_x = vertices[lower_lid[order], 0]
    target_y = np.interp(vertices[upper_lid, 0], lower_x, vertices[lower_lid[order], 1])
    target_z = np.interp(vertices[upper_lid, 0], lower_x, vertices[lower_lid[order], 2])
    moving = np.zeros((len(upper_lid), 3))
    moving[:, 1] = target_y - vertices[upper_lid, 1]
    # A closed lid bulges over the eyeball, slightly in front of the lower lid.
    moving[:, 2] = target_z - vertices[upper_lid, 2] + 0.1
    anchors = np.concatenate([upper_lid, lower_lid, brow])
    displacements = np.concatenate([moving, np.zeros((len(lower_lid) + len(brow), 3))])
    return _smooth_field(vertices, anchors, displacements, radius=0.35)


def build_expression_basis(vertices: np.ndarray) -> np.ndarray:
    """Expression displacement fields (E, V, 3) in cm, one per name in ``EXPRESSION_NAMES``.

    Coefficient 1 is a full, clearly visible expression of an average adult face (e.g. 0.6 cm of
    mouth-corner travel, a fully closed eye); the fields are made from the mean mesh's
    semantic regions (mediapipe's lip, eye and brow contours) with smooth fall-off.
    """
    from mediapipe.python.solutions import face_mesh_connections as connections

    upper_lip, lower_lip, _ = lip_regions(vertices)
    lips = np.flatnonzero(upper_lip | lower_lip)
    right_eye = _indices_of(connections.FACEMESH_RIGHT_EYE)
    left_eye = _indices_of(connections.FACEMESH_LEFT_EYE)
    right_brow = _indices_of(connections.FACEMESH_RIGHT_EYEBROW)
    left_brow = _indices_of(connections.FACEMESH_LEFT_EYEBROW)
    brows = np.concatenate([right_brow, left_brow])
    eyes = np.concatenate([right_eye, left_eye])
    nose = _indices_of(connections.FACEMESH_NOSE)
    # Points that mouth expressions must not move: the nose, the chin and the lip centre line.
    mouth_pins = np.unique(np.concatenate([nose, [CHIN], UPPER_LIP_CENTRE, LOWER_LIP_CENTRE]))
    corners = np.array(MOUTH_CORNERS_OUTER + MOUTH_CORNERS_INNER)
    corner_side = np.sign(vertices[corners, 0])[:, None]

    fields = {}
    # Mouth corners 0.6 cm sideways; cheeks follow within ~1 cm.
    moving = np.zeros((4, 3))
    moving[:, 0] = 0.6 * corner_side[:, 0]
    fields["mouth_stretch"] = _smooth_field(
        vertices, np.concatenate([corners, mouth_pins]), np.concatenate([moving, np.zeros((len(mouth_pins), 3))]), 0.9
    )
    # Corners 0.6 cm up and a little back (they slide along the cheek).
    moving = np.tile([0.0, 0.6, -0.2], (4, 1))
    fields["mouth_corners_up"] = _smooth_field(
        vertices, np.concatenate([corners, mouth_pins]), np.concatenate([moving, np.zeros((len(mouth_pins), 3))]), 0.9
    )
    # Lips 0.5 cm forward and 30 % narrower around the mouth centre.
    mouth_centre_x = 0.0
    moving = np.zeros((len(lips), 3))
    moving[:, 0] = -0.3 * (vertices[lips, 0] - mouth_centre_x)
    moving[:, 2] = 0.5
    pucker_pins = np.unique(np.concatenate([nose, [CHIN]]))
    fields["lip_pucker"] = _smooth_field(
        vertices, np.concatenate([lips, pucker_pins]), np.concatenate([moving, np.zeros((len(pucker_pins), 3))]), 0.7
    )
    # Upper lip 0.3 cm up and lower lip 0.3 cm down, most in the middle, nothing at the corners.
    half_width = abs(vertices[MOUTH_CORNERS_OUTER[1], 0])
    taper = np.sqrt(np.clip(1.0 - (vertices[lips, 0] / half_width) ** 2, 0.0, 1.0))
    moving = np.zeros((len(lips), 3))
    moving[:, 1] = np.where(upper_lip[lips], 0.3, -0.3) * taper
    part_pins = np.unique(np.concatenate([nose, [CHIN], MOUTH_CORNERS_OUTER]))
    part_pins = part_pins[~np.isin(part_pins, lips)]
    fields["lips_part"] = _smooth_field(vertices, np.concatenate([lips, part_pins]), np.concatenate([moving, np.zeros((len(part_pins), 3))]), 0.5)
    fields["eye_close_right"] = _eye_close_field(vertices, right_eye, RIGHT_EYE_CORNERS, right_brow)
    fields["eye_close_left"] = _eye_close_field(vertices, left_eye, LEFT_EYE_CORNERS, left_brow)
    # Brows 0.6 cm up; the forehead above follows, the eyes stay.
    moving = np.tile([0.0, 0.6, 0.0], (len(brows), 1))
    brow_pins = np.unique(np.concatenate([eyes, nose]))
    fields["brow_raise"] = _smooth_field(vertices, np.concatenate([brows, brow_pins]), np.concatenate([moving, np.zeros((len(brow_pins), 3))]), 1.0)
    # Brows 0.4 cm down and 0.3 cm towards the nose, the inner ends most.
    inner_weight = np.clip(1.0 - (np.abs(vertices[brows, 0]) - 1.0) / 5.0, 0.3, 1.0)
    moving = np.zeros((len(brows), 3))
    moving[:, 1] = -0.4 * inner_weight
    moving[:, 0] = -0.3 * np.sign(vertices[brows, 0]) * inner_weight
    fields["brow_lower"] = _smooth_field(vertices, np.concatenate([brows, brow_pins]), np.concatenate([moving, np.zeros((len(brow_pins), 3))]), 0.8)
    return np.stack([fields[name] for name in EXPRESSION_NAMES])
