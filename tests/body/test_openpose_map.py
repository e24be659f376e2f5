"""Pose maps: mediapipe keypoints in OpenPose's layout on a real photo, OpenPose's drawing (colours,
widths, blending), face dots from the head prior landing on the face.

Photo: skimage's astronaut, the only real person photo shipped in an installed package here; it is
an upper-body portrait (head, shoulders, the right elbow), so the real-photo tests cover the head
and upper-body joints and limbs; hips, legs and hands are covered by synthetic keypoints whose
drawing is checked pixel by pixel.
"""

from __future__ import annotations

import matplotlib.colors
import numpy as np
import pytest
from skimage import data

from caphuman.body.keypoints import NUM_BODY_POINTS, BodyKeypoints, body_keypoints, openpose_body_from_blazepose
from caphuman.body.openpose_map import (
    BODY_COLORS,
    HAND_EDGES,
    draw_openpose_map,
    hand_edge_color,
    parse_body_modes,
)
from caphuman.errors import CapHumanError

SIZE = 512
# Hand-labelled on the 512 x 512 astronaut photo (pixels, x right, y down), read off a 20-px grid.
NOSE, RIGHT_EYE, LEFT_EYE = (220, 130), (205, 102), (247, 104)


@pytest.fixture(scope="module")
def astronaut_keypoints() -> BodyKeypoints:
    return body_keypoints(data.astronaut())


def test_astronaut_joints_are_where_a_person_sees_them(astronaut_keypoints):
    joints = astronaut_keypoints.pixels(SIZE, SIZE)
    found = astronaut_keypoints.found
    for index, label in ((0, NOSE), (14, RIGHT_EYE), (15, LEFT_EYE)):
        assert found[index] and np.hypot(*(joints[index] - label)) < 12, (index, joints[index])
    # Her right shoulder is on the image's left, the left one on the right, both below the chin.
    assert 60 < joints[2][0] < 160 and 200 < joints[2][1] < 300
    assert 270 < joints[5][0] < 370 and 200 < joints[5][1] < 300
    # The neck is the shoulders' midpoint, as in OpenPose.
    np.testing.assert_allclose(joints[1], (joints[2] + joints[5]) / 2, atol=1e-3)
    # Hips, knees and ankles are below the frame: left out, as OpenPose leaves out what it cannot see.
    assert not found[[8, 9, 10, 11, 12, 13]].any()


def colour_near(image: np.ndarray, point, colour, radius: int = 4) -> bool:
    x, y = int(point[0]), int(point[1])
    patch = image[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1]
    return bool((patch == np.array(colour, dtype=np.uint8)).all(axis=-1).any())


def test_astronaut_map_has_openpose_colours_at_joints_and_limbs(astronaut_keypoints):
    image = draw_openpose_map(astronaut_keypoints, None, SIZE, SIZE, "body")
    joints = astronaut_keypoints.pixels(SIZE, SIZE)
    for index in np.flatnonzero(astronaut_keypoints.found):
        assert colour_near(image, joints[index], BODY_COLORS[index]), index
    # Long limbs: neck-right shoulder (0), neck-left shoulder (1), right upper arm (2), neck-nose
    # (12). Their middle is drawn at 0.6 of the limb's colour over black.
    for limb, (start, end) in ((0, (1, 2)), (1, (1, 5)), (2, (2, 3)), (12, (1, 0))):
        middle = ((joints[start] + joints[end]) / 2).astype(int)
        expected = np.round(0.6 * np.array(BODY_COLORS[limb]))
        np.testing.assert_allclose(image[middle[1], middle[0]], expected, atol=1)
    # Only OpenPose colours (pure or 0.6-blended) and their overlaps: no white face dots in "body".
    assert not (image == 255).all(axis=-1).any()


def test_face_dots_from_the_head_prior_land_on_the_face():
    """Dots from the built-in prior's projected landmarks: on dlib's 68-point landmarks (a separate
    detector and landmark model) and inside the face they outline."""
    import dlib

    from caphuman.faces.dlib_recognizer import SHAPE_PREDICTOR_FILES, find_models_dir
    from caphuman.head.builtin.builtin_prior import BuiltinHeadPrior
    from caphuman.head.landmarks import face_points

    photo = data.astronaut()
    prior = BuiltinHeadPrior()
    points = face_points(prior, prior.reconstruct(photo)) * SIZE
    box = dlib.get_frontal_face_detector()(photo, 1)[0]
    predictor = dlib.shape_predictor(str(find_models_dir() / SHAPE_PREDICTOR_FILES[68]))
    reference = np.array([[p.x, p.y] for p in predictor(photo, box).parts()], dtype=float)
    errors = np.linalg.norm(points - reference, axis=1)
    assert errors.mean() < 4.0 and np.median(errors) < 3.0, errors.round(1)

    image = draw_openpose_map(None, points / SIZE, SIZE, SIZE, "face")
    white = np.argwhere((image == 255).all(axis=-1))  # (row, column)
    assert len(white) > 68 * 9  # 68 dots of radius 3 (some overlap)
    # The face box: dlib's landmarks' extent (its detector box stops above the chin), plus the
    # dot radius and a few pixels.
    (left, top), (right, bottom) = reference.min(axis=0) - 6, reference.max(axis=0) + 6
    assert left <= white[:, 1].min() and white[:, 1].max() <= right
    assert top <= white[:, 0].min() and white[:, 0].max() <= bottom
    assert not (image.max(axis=-1) != image.min(axis=-1)).any()  # face dots only: nothing coloured


def synthetic_keypoints() -> BodyKeypoints:
    body = np.full((NUM_BODY_POINTS, 2), np.nan, dtype=np.float32)
    body[1] = (100, 100)  # neck
    body[2] = (160, 100)  # right shoulder, a horizontal limb from the neck
    body[8] = (100, 200)  # right hip, a vertical limb from the neck
    # Wrist (300, 300) and thumb base (300, 400) apart from the rest (clustered near (450, 450)),
    # so edge 0 (wrist-thumb) is a long vertical line that nothing else crosses.
    hand = np.array([(440 + 3 * (i % 5), 440 + 3 * (i // 5)) for i in range(21)], dtype=np.float32)
    hand[0], hand[1] = (300, 300), (300, 400)
    return BodyKeypoints(body=body / SIZE, hands=[hand / SIZE], image_size=(SIZE, SIZE))


def test_synthetic_limbs_joints_and_stick_width():
    image = draw_openpose_map(synthetic_keypoints(), None, SIZE, SIZE, "body")
    np.testing.assert_array_equal(image[100, 130], [153, 0, 0])  # limb 0 (neck-right shoulder): 0.6 x (255, 0, 0)
    np.testing.assert_array_equal(image[150, 100], [0, 153, 0])  # limb 6 (neck-right hip): 0.6 x (0, 255, 0)
    np.testing.assert_array_equal(image[100, 163], BODY_COLORS[2])  # the shoulder's joint beyond the limb's end
    np.testing.assert_array_equal(image[203, 100], BODY_COLORS[8])
    assert image[104, 130].any() and not image[106, 130].any()  # half-width 4 px
    assert not image[300:, 300:].any()  # no hands without "hand"


def test_synthetic_hand_uses_openposes_hsv_edge_colours():
    keypoints = synthetic_keypoints()
    image = draw_openpose_map(keypoints, None, SIZE, SIZE, "hand")
    # The official colour: matplotlib's hsv_to_rgb([edge / 20, 1, 1]) * 255.
    for edge in range(len(HAND_EDGES)):
        official = np.round(matplotlib.colors.hsv_to_rgb([edge / len(HAND_EDGES), 1.0, 1.0]) * 255)
        np.testing.assert_array_equal(hand_edge_color(edge), official)
    np.testing.assert_array_equal(image[350, 300], hand_edge_color(0))  # middle of edge 0 (wrist-thumb)
    assert not image[350, 303].any()  # 2 px line
    np.testing.assert_array_equal(image[300, 300], (0, 0, 255))  # the wrist point on top
    assert not image[:250].any()  # no body without "body"


def test_layers_add_and_saturate():
    keypoints = synthetic_keypoints()
    face = np.array([[0.5, 0.5], [130 / SIZE, 100 / SIZE]], dtype=np.float32)  # one dot on the red limb
    both = draw_openpose_map(keypoints, face, SIZE, SIZE, "face,body")
    np.testing.assert_array_equal(both[256, 256], (255, 255, 255))
    np.testing.assert_array_equal(both[100, 130], (255, 255, 255))  # 153 + 255 saturates
    body_only = draw_openpose_map(keypoints, face, SIZE, SIZE, ["body"])
    assert not body_only[256, 256].any()


def test_blazepose_mapping_and_modes():
    landmarks = np.random.default_rng(0).uniform(0.1, 0.9, size=(33, 2)).astype(np.float32)
    visibility = np.ones(33, dtype=np.float32)
    visibility[12] = 0.1  # right shoulder unseen: no right shoulder, no neck
    body = openpose_body_from_blazepose(landmarks, visibility)
    np.testing.assert_array_equal(body[0], landmarks[0])
    np.testing.assert_array_equal(body[5], landmarks[11])  # OpenPose left shoulder = BlazePose 11
    np.testing.assert_array_equal(body[10], landmarks[28])  # right ankle
    np.testing.assert_array_equal(body[17], landmarks[7])  # left ear
    assert np.isnan(body[2]).all() and np.isnan(body[1]).all()
    assert parse_body_modes("face, body,hand") == ("face", "body", "hand")
    with pytest.raises(CapHumanError, match="feet"):
        parse_body_modes("body,feet")
