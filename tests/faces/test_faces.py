"""Faces: photo loading, mediapipe detection, alignment crops, mesh face mask, dlib identity.

Real photos used: skimage.data.astronaut() (Eileen Collins, public domain) and matplotlib's
sample grace_hopper.jpg (Grace Hopper, public domain), a second real person for the identity
check. Expected values come from outside the code under test: the ArcFace template, pixels
picked by looking at the astronaut photo, dlib's own detector and 68-point landmarks, and
dlib's published 0.6 same-person threshold.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
import skimage.data
import skimage.measure
import torch
from PIL import Image

from caphuman.errors import InputImageError, MissingWeightsError
from caphuman.faces.alignment import (
    ARCFACE_TEMPLATE_112,
    aligned_square_crop,
    arcface_crop,
    clip_face_crop,
    facenet_crop,
    invert_transform,
    map_points,
)
from caphuman.faces.detection import DetectedFace, FaceDetector, five_point_landmarks, select_face
from caphuman.faces.dlib_recognizer import SAME_PERSON_DISTANCE, DlibRecognizer, find_models_dir
from caphuman.faces.images import load_image
from caphuman.faces.mesh_mask import face_mask, face_region_mask_from_labels
from caphuman.faces.recognizer import FaceRecognizer

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def detector():
    with FaceDetector(max_faces=5) as face_detector:
        yield face_detector


@pytest.fixture(scope="module")
def astronaut_face(detector, astronaut) -> DetectedFace:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    return faces[0]


@pytest.fixture(scope="module")
def recognizer() -> DlibRecognizer:
    return DlibRecognizer()


def _paste(canvas_shape: tuple[int, int], placements: list[tuple[float, int, int]]) -> np.ndarray:
    """Grey canvas with astronaut copies: (scale, x, y) top-left placements."""
    canvas = np.full(canvas_shape + (3,), 128, dtype=np.uint8)
    for scale, x, y in placements:
        copy = cv2.resize(skimage.data.astronaut(), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        canvas[y : y + copy.shape[0], x : x + copy.shape[1]] = copy
    return canvas


# ----------------------------------------------------------------------------- load_image


def test_load_image_missing_non_image_and_truncated_files(tmp_path, astronaut):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(InputImageError, match="nope.jpg"):
        load_image(missing)

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not pixels")
    with pytest.raises(InputImageError, match="notes.png"):
        load_image(not_an_image)

    for suffix in ("jpg", "png"):
        whole = tmp_path / f"whole.{suffix}"
        Image.fromarray(astronaut).save(whole)
        truncated = tmp_path / f"truncated.{suffix}"
        truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        with pytest.raises(InputImageError, match=f"truncated.{suffix}"):
            load_image(truncated)


def test_load_image_converts_modes_and_applies_exif_rotation(tmp_path, astronaut):
    grey = (np.arange(40 * 30) % 256).astype(np.uint8).reshape(40, 30)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    loaded = load_image(tmp_path / "grey.png")
    assert loaded.shape == (40, 30, 3) and loaded.dtype == np.uint8
    assert np.array_equal(loaded[:, :, 0], grey) and np.array_equal(loaded[:, :, 2], grey)

    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (10, 20, 30, 255)  # opaque left half, fully transparent right half
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    loaded = load_image(tmp_path / "rgba.png")
    assert np.array_equal(loaded[0, 0], [10, 20, 30]) and np.array_equal(loaded[0, 7], [255, 255, 255])

    # EXIF orientation 6 = "stored rotated; rotate 90 degrees clockwise to display".
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(astronaut[:, :300]).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_image(tmp_path / "rotated.jpg")
    expected = np.rot90(astronaut[:, :300], k=-1)
    assert loaded.shape == expected.shape == (300, 512, 3)
    assert np.abs(loaded.astype(int) - expected.astype(int)).mean() < 4


# ----------------------------------------------------------------------------- detection


def test_astronaut_has_one_face_with_plausible_box_and_landmarks(astronaut_face):
    x0, y0, x1, y1 = astronaut_face.box
    # The face (hairline to chin, cheek to cheek) spans about x 175..275, y 65..185 in the photo.
    assert 160 < x0 < 195 and 255 < x1 < 290 and 55 < y0 < 90 and 160 < y1 < 195
    assert astronaut_face.score > 0.5
    points = astronaut_face.landmarks
    assert points.shape == (478, 3) and points.dtype == np.float32
    assert np.all((points[:, 0] >= x0 - 1) & (points[:, 0] <= x1 + 1))
    assert np.all((points[:, 1] >= y0 - 1) & (points[:, 1] <= y1 + 1))
    # z is on the pixel scale: depth range of a face ~100 px wide is tens of pixels, not 0.1.
    assert 20 < np.ptp(points[:, 2]) < 150


def test_flipped_photo_gives_mirrored_box(detector, astronaut, astronaut_face):
    flipped_faces = detector.detect(astronaut[:, ::-1])
    assert len(flipped_faces) == 1
    width = astronaut.shape[1]
    x0, y0, x1, y1 = astronaut_face.box
    fx0, fy0, fx1, fy1 = flipped_faces[0].box
    assert np.allclose([fx0, fx1, fy0, fy1], [width - x1, width - x0, y0, y1], atol=4.0)


def test_five_points_are_where_dlib_puts_the_eyes(recognizer, astronaut, astronaut_face):
    five = five_point_landmarks(astronaut_face)
    assert five.shape == (5, 2)
    # dlib's independent 68-point predictor: eye 36..41 is the image-left eye, 42..47 the right,
    # 48 and 54 the mouth corners.
    dlib68 = DlibRecognizer(landmark_points=68).landmarks(astronaut, astronaut_face)
    assert np.linalg.norm(five[0] - dlib68[36:42].mean(axis=0)) < 4
    assert np.linalg.norm(five[1] - dlib68[42:48].mean(axis=0)) < 4
    assert np.linalg.norm(five[3] - dlib68[48]) < 5 and np.linalg.norm(five[4] - dlib68[54]) < 5


def test_photo_without_face_gives_empty_list_and_select_face_names_source(detector):
    assert detector.detect(skimage.data.coffee()) == []
    assert detector.detect(np.full((300, 400, 3), 200, dtype=np.uint8)) == []
    with pytest.raises(InputImageError, match=r"No face found in coffee\.jpg\."):
        select_face([], 0, "coffee.jpg")


def test_two_faces_sorted_largest_first_and_face_index_picks_the_other(detector, caplog):
    # Full-size astronaut at (0, 0) and a half-size one at (600, 100): its face is ~52 px in a
    # 900 px canvas, too small for the whole-image mesh, so this also runs the tiled detector.
    canvas = _paste((600, 900), [(1.0, 0, 0), (0.5, 600, 100)])
    faces = detector.detect(canvas)
    assert len(faces) == 2
    assert faces[0].area > 3 * faces[1].area
    big_center_x = (faces[0].box[0] + faces[0].box[2]) / 2
    small_center_x = (faces[1].box[0] + faces[1].box[2]) / 2
    assert big_center_x < 512 and 600 + 0.5 * 175 < small_center_x < 600 + 0.5 * 275
    with caplog.at_level(logging.INFO, logger="caphuman.faces.detection"):
        chosen = select_face(faces, 1, "two.png")
    assert chosen is faces[1]
    assert "Found 2 faces in two.png" in caplog.text and "--face-index" in caplog.text
    with pytest.raises(InputImageError, match="two.png"):
        select_face(faces, 2, "two.png")


def test_small_face_in_large_photo_is_found_by_crop_retry(detector):
    # A 0.4-scale astronaut (face ~40 px wide) in a 1920 x 1200 photo.
    scale, left, top = 0.4, 1400, 700
    canvas = _paste((1200, 1920), [(scale, left, top)])
    # mediapipe's whole-image mesh alone misses it (the reason for the retry path).
    assert detector._mesh_points(detector._mesh, canvas) == []
    faces = detector.detect(canvas)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    # Where the face must be: the full-size face box (about 179..271, 71..177) scaled and shifted.
    assert abs((x0 + x1) / 2 - (left + scale * 225)) < 4 and abs((y0 + y1) / 2 - (top + scale * 124)) < 4
    assert abs((x1 - x0) - scale * 92) < 6
    # The mapped-back mesh keeps its shape: eye distance is the full-size one (~42 px) scaled.
    eyes = five_point_landmarks(faces[0])[:2]
    assert abs(np.linalg.norm(eyes[1] - eyes[0]) - scale * 42.2) < 3


# ----------------------------------------------------------------------------- alignment


def test_arcface_crop_puts_five_points_on_the_template():
    # Synthetic photo: five white dots at a rotated, scaled, shifted copy of the template.
    angle, scale, shift = np.deg2rad(25), 2.3, np.array([140.0, 90.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source_points = ARCFACE_TEMPLATE_112 @ rotation.T + shift
    image = np.zeros((500, 500, 3), dtype=np.uint8)
    for x, y in source_points:
        cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 5 * 16, (255, 255, 255), -1, shift=4)
    landmarks = np.zeros((478, 3), dtype=np.float32)
    for index_group, point in zip(((33, 133), (362, 263), (4,), (61,), (291,)), source_points, strict=True):
        landmarks[list(index_group), :2] = point
    face = DetectedFace(box=(0.0, 0.0, 500.0, 500.0), score=1.0, landmarks=landmarks)

    crop, transform = arcface_crop(image, face)
    assert crop.shape == (112, 112, 3)
    assert np.abs(map_points(source_points, transform) - ARCFACE_TEMPLATE_112).max() < 0.01
    # Pixels, not just matrices: each dot's centroid in the crop lands on its template point.
    labels = skimage.measure.label(crop[:, :, 0] > 127)
    centroids = np.array([region.centroid[::-1] for region in skimage.measure.regionprops(labels)])
    assert len(centroids) == 5
    for template_point in ARCFACE_TEMPLATE_112:
        assert np.min(np.linalg.norm(centroids - template_point, axis=1)) < 0.8
    round_trip = map_points(map_points(source_points, transform), invert_transform(transform))
    assert np.abs(round_trip - source_points).max() < 1e-6


def test_arcface_crop_of_real_face_is_near_template(astronaut, astronaut_face):
    _, transform = arcface_crop(astronaut, astronaut_face)
    mapped = map_points(five_point_landmarks(astronaut_face), transform)
    residual = np.linalg.norm(mapped - ARCFACE_TEMPLATE_112, axis=1)
    # A broad smile widens the mouth beyond the average template; eyes stay close.
    assert residual[:2].max() < 4.5 and residual.mean() < 5.5


def test_facenet_crop_matches_a_plain_box_crop(astronaut, detector):
    for zoom in (1, 2):  # 2x also exercises the anti-aliased downscaling path (212 px face -> 160)
        image = cv2.resize(astronaut, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
        face = detector.detect(image)[0]
        crop, _ = facenet_crop(image, face, size=160)
        x0, y0, x1, y1 = face.box
        side = max(x1 - x0, y1 - y0)
        left, top = int(round((x0 + x1 - side) / 2)), int(round((y0 + y1 - side) / 2))
        square = image[top : top + int(round(side)), left : left + int(round(side))]
        reference = cv2.resize(square, (160, 160), interpolation=cv2.INTER_AREA)
        assert np.abs(crop.astype(int) - reference.astype(int)).mean() < 8


def test_aligned_square_crop_uprights_a_tilted_head(astronaut, detector):
    height, width = astronaut.shape[:2]
    tilt = cv2.getRotationMatrix2D((width / 2, height / 2), 20, 1.0)
    tilted = cv2.warpAffine(astronaut, tilt, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
    face = detector.detect(tilted)[0]
    crop, transform = aligned_square_crop(tilted, face, size=512)
    assert crop.shape == (512, 512, 3)
    # Detect again on the crop itself: the eyes must now be level and centred.
    redetected = detector.detect(crop)
    assert len(redetected) >= 1
    left_eye, right_eye = five_point_landmarks(redetected[0])[:2]
    assert abs(left_eye[1] - right_eye[1]) < 4
    assert abs((left_eye[0] + right_eye[0]) / 2 - 256) < 10
    # The mapped landmarks agree with the re-detected ones.
    mapped = map_points(five_point_landmarks(face), transform)
    assert np.abs(mapped[:2] - np.stack([left_eye, right_eye])).max() < 6


def test_clip_crop_is_white_where_the_mask_is_off(astronaut, astronaut_face):
    mask = face_mask(astronaut.shape, astronaut_face)
    crop, transform = clip_face_crop(astronaut, astronaut_face, mask, size=224)
    plain, _ = aligned_square_crop(astronaut, astronaut_face, size=224, border="constant")
    # Independent nearest-neighbour lookup of each crop pixel's source pixel in the mask.
    ys, xs = np.mgrid[0:224, 0:224]
    source = map_points(np.stack([xs.ravel(), ys.ravel()], axis=1), invert_transform(transform))
    col, row = np.round(source[:, 0]).astype(int), np.round(source[:, 1]).astype(int)
    inside = (col >= 0) & (col < astronaut.shape[1]) & (row >= 0) & (row < astronaut.shape[0])
    looked_up = np.zeros(col.shape, dtype=bool)
    looked_up[inside] = mask[row[inside], col[inside]]
    looked_up = looked_up.reshape(224, 224)
    off = cv2.erode((~looked_up).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    on = cv2.erode(looked_up.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert off.mean() > 0.4 and on.mean() > 0.15
    assert np.all(crop[off] == 255)
    assert np.array_equal(crop[on], plain[on])


# ----------------------------------------------------------------------------- face mask


def test_mesh_face_mask_covers_face_and_excludes_hair_and_background(astronaut, astronaut_face, recognizer):
    mask = face_mask(astronaut.shape, astronaut_face)
    assert mask.shape == astronaut.shape[:2] and mask.dtype == bool
    # dlib's own detector box and 68 landmarks (independent of mediapipe).
    import dlib

    hog_box = dlib.get_frontal_face_detector()(astronaut, 1)[0]
    in_box = np.zeros_like(mask)
    in_box[hog_box.top() : hog_box.bottom(), hog_box.left() : hog_box.right()] = True
    assert (mask & in_box).sum() / mask.sum() > 0.8  # the mask is mostly inside dlib's face box
    assert (mask & in_box).sum() / in_box.sum() > 0.7  # and fills most of it
    dlib68 = DlibRecognizer(landmark_points=68).landmarks(astronaut, astronaut_face).astype(int)
    brows_eyes_nose_mouth = dlib68[17:]
    assert mask[brows_eyes_nose_mouth[:, 1], brows_eyes_nose_mouth[:, 0]].all()
    # Background corners and hair pixels (picked by eye: crown, left and right side hair).
    for row, col in [(0, 0), (0, 511), (20, 480), (50, 220), (95, 165), (95, 290), (200, 225)]:
        assert not mask[row, col], (row, col)
    # Colour check: nearly every mask pixel is skin-toned (YCrCb skin box), unlike the photo.
    ycrcb = cv2.cvtColor(astronaut, cv2.COLOR_RGB2YCrCb)
    skin = (ycrcb[..., 1] >= 133) & (ycrcb[..., 1] <= 173) & (ycrcb[..., 2] >= 77) & (ycrcb[..., 2] <= 127)
    assert skin[mask].mean() > 0.95 and skin[~mask].mean() < 0.5


def test_face_region_from_parsing_labels_keeps_caphuman_classes():
    labels = np.arange(19).reshape(1, 19)
    region = face_region_mask_from_labels(labels)[0]
    kept = {int(label) for label in np.flatnonzero(region)}
    assert kept == {1, 2, 3, 4, 5, 6, 10, 11, 12, 13}
    with pytest.raises(ValueError):
        face_region_mask_from_labels(np.array([[19]]))


# ----------------------------------------------------------------------------- dlib identity


def test_dlib_same_person_after_flip_and_different_person(recognizer, detector, astronaut, astronaut_face):
    assert isinstance(recognizer, FaceRecognizer) and recognizer.embedding_dim == 128
    assert GRACE_HOPPER.is_file(), "matplotlib's sample data should ship grace_hopper.jpg"
    hopper = load_image(GRACE_HOPPER)
    hopper_face = select_face(detector.detect(hopper), 0, str(GRACE_HOPPER))
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    flipped_face = detector.detect(flipped)[0]

    astronaut_embedding = recognizer.embed_image(astronaut, astronaut_face)
    flipped_embedding = recognizer.embed_image(flipped, flipped_face)
    hopper_embedding = recognizer.embed_image(hopper, hopper_face)
    assert astronaut_embedding.shape == (128,)
    same = recognizer.distance(astronaut_embedding, flipped_embedding)
    different = recognizer.distance(astronaut_embedding, hopper_embedding)
    logging.getLogger(__name__).info("dlib distances: flip %.3f, Grace Hopper %.3f", same, different)
    assert same < SAME_PERSON_DISTANCE < different

    batch = recognizer.embed([recognizer.chip(astronaut, astronaut_face), recognizer.chip(hopper, hopper_face)])
    assert batch.shape == (2, 128) and batch.dtype == torch.float32
    assert np.allclose(batch[0].numpy(), astronaut_embedding, atol=1e-5)
    with pytest.raises(ValueError):
        recognizer.embed([np.zeros((112, 112, 3), dtype=np.uint8)])


def test_dlib_missing_weights_names_file_and_install_command(tmp_path):
    assert find_models_dir() is not None  # the installed face_recognition_models package
    expected = r"dlib_face_recognition_resnet_model_v1\.dat.*pip install face_recognition_models"
    with pytest.raises(MissingWeightsError, match=expected):
        DlibRecognizer(models_dir=tmp_path)
