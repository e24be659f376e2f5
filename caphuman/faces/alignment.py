"""The face crops each model needs, cut from a :class:`DetectedFace`.

Every crop is one affine warp of the input photo, and the 2x3 matrix used is returned with it
(input-image pixels -> crop pixels), so landmarks, masks and renders can follow the crop with
:func:`map_points` and :func:`invert_transform`.

- :func:`facenet_crop`: square box crop with MTCNN's margin convention, 160 px (FaceNet).
- :func:`arcface_crop`: 5-point similarity alignment to the 112 px ArcFace template.
- :func:`aligned_square_crop`: eye/mouth-aligned square crop of the whole head, 512 px (the
  training target framing and the head prior's image).
- :func:`clip_face_crop`: the same framing at 224 px with non-face pixels painted white, the way
  CapHuman feeds its reference to CLIP.

Coordinates follow OpenCV's convention: pixel (i, j) has its centre at x = j, y = i.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

from caphuman.faces.detection import DetectedFace, five_point_landmarks

# The standard ArcFace (insightface) 112 x 112 template for the five points, in the order of
# five_point_landmarks: image-left eye, image-right eye, nose tip, left and right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# FFHQ-style framing (Karras et al., StyleGAN): the crop's half side is the larger of twice the
# eye distance and 1.8 times the eye-to-mouth distance, centred 10 % of the way from the eyes to
# the mouth. CelebA-HQ, which CapHuman trains on, was cropped in the same spirit.
_HALF_SIDE_PER_EYE_DISTANCE = 2.0
_HALF_SIDE_PER_EYE_TO_MOUTH = 1.8
_CENTER_TOWARD_MOUTH = 0.1

BorderMode = Literal["reflect", "constant", "replicate"]
_CV2_BORDERS = {
    "reflect": cv2.BORDER_REFLECT_101,
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
}


class FaceCrop(NamedTuple):
    """A crop and where it came from.

    Attributes:
        image: (size, size, 3) uint8 RGB crop.
        transform: (2, 3) float64 affine matrix mapping input-image pixel coordinates (x, y) to
            crop pixel coordinates: crop_xy = transform[:, :2] @ xy + transform[:, 2].
    """

    image: np.ndarray
    transform: np.ndarray


def map_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine transform to points.

    Args:
        points: (N, 2) or (N, >=2) array; only the first two columns (x, y) are used.
        transform: (2, 3) affine matrix.
    Returns:
        (N, 2) float64 transformed points.
    """
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    return xy @ np.asarray(transform, dtype=np.float64)[:, :2].T + np.asarray(transform, dtype=np.float64)[:, 2]


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine transform (crop pixels -> input-image pixels)."""
    return cv2.invertAffineTransform(np.asarray(transform, dtype=np.float64))


def warp_image(
    image: np.ndarray,
    transform: np.ndarray,
    size: int,
    border: BorderMode = "constant",
    border_value: int | tuple[int, ...] = 0,
    interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Warp an image (or mask) into a ``size`` x ``size`` crop.

    When the warp shrinks the image, the image is first reduced with area averaging so a large
    face does not alias (cv2.warpAffine samples only the nearest source pixels).

    Args:
        image: (H, W) or (H, W, C) array (uint8 or float32).
        transform: (2, 3) input pixels -> crop pixels.
        size: crop side in pixels.
    Returns:
        (size, size[, C]) array of the input's dtype.
    """
    transform = np.asarray(transform, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    source = image
    if scale < 1.0 and interpolation != cv2.INTER_NEAREST:
        height, width = image.shape[:2]
        reduced_w, reduced_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
        source = cv2.resize(image, (reduced_w, reduced_h), interpolation=cv2.INTER_AREA)
        # The warp now reads the reduced image: x_original = x_reduced * (width / reduced_w).
        # cv2.resize maps pixel centres as (x + 0.5) * factor - 0.5.
        factor_x, factor_y = width / reduced_w, height / reduced_h
        reduced_to_original = np.array([[factor_x, 0.0, 0.5 * factor_x - 0.5], [0.0, factor_y, 0.5 * factor_y - 0.5], [0.0, 0.0, 1.0]])
        transform = transform @ reduced_to_original
    return cv2.warpAffine(
        source,
        transform,
        (size, size),
        flags=interpolation,
        borderMode=_CV2_BORDERS[border],
        borderValue=border_value,
    )


def square_box_transform(center: tuple[float, float], side: float, size: int) -> np.ndarray:
    """2x3 transform taking an axis-aligned square (centre, side in input pixels) to a size x size crop."""
    scale = size / side
    center_x, center_y = center
    # The square's left edge (center_x - side / 2) maps to the crop's left edge (-0.5 in pixel
    # centre coordinates), so the crop shows exactly the square.
    return np.array(
        [
            [scale, 0.0, -scale * (center_x - side / 2.0) - 0.5],
            [0.0, scale, -scale * (center_y - side / 2.0) - 0.5],
        ]
    )


def facenet_crop(image: np.ndarray, face: DetectedFace, size: int = 160, margin: float = 0.0) -> FaceCrop:
    """Square box crop for FaceNet (InceptionResnetV1), like facenet-pytorch's MTCNN.

    ``margin`` follows MTCNN's convention: pixels of margin in the OUTPUT crop, converted to
    input pixels as ``margin * box_side / (size - margin)``. CapHuman's reference code uses
    MTCNN(image_size=160) with its default margin 0. Unlike MTCNN, the box is made square
    (centred, side = the longer box side) and the image is padded with black rather than clipped,
    so the face is never stretched.

    Args:
        image: (H, W, 3) uint8 RGB.
        face: the face to crop.
        size: output side in pixels.
        margin: output-pixel margin (MTCNN semantics), >= 0 and < size.
    Returns:
        FaceCrop with a (size, size, 3) uint8 image.
    """
    if not 0.0 <= margin < size:
        raise ValueError(f"margin must be in [0, size), got {margin}")
    x0, y0, x1, y1 = face.box
    box_side = max(x1 - x0, y1 - y0)
    side = box_side + margin * box_side / (size - margin)
    transform = square_box_transform(((x0 + x1) / 2.0, (y0 + y1) / 2.0), side, size)
    return FaceCrop(warp_image(image, transform, size), transform)


def arcface_transform(face: DetectedFace, size: int = 112) -> np.ndarray:
    """Least-squares similarity transform from the face's five points to the ArcFace template."""
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)
    points = five_point_landmarks(face).astype(np.float64)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        estimated = SimilarityTransform.from_estimate(points, template)
        succeeded = bool(estimated)
    else:
        estimated = SimilarityTransform()
        succeeded = estimated.estimate(points, template)
    if not succeeded:
        raise ValueError("could not estimate the ArcFace alignment from the five face points")
    return np.asarray(estimated.params[:2, :], dtype=np.float64)


def arcface_crop(image: np.ndarray, face: DetectedFace, size: int = 112) -> FaceCrop:
    """Five-point similarity alignment to the standard ArcFace template (insightface's norm_crop).

    Args:
        image: (H, W, 3) uint8 RGB.
        face: the face to align.
        size: output side; the 112 px template is scaled by size / 112.
    Returns:
        FaceCrop with a (size, size, 3) uint8 image; outside the photo is black.
    """
    transform = arcface_transform(face, size)
    return FaceCrop(warp_image(image, transform, size), transform)


def aligned_square_transform(face: DetectedFace, size: int = 512, scale: float = 1.0) -> np.ndarray:
    """Rotation + scale + shift from the photo to the eye/mouth-aligned square crop.

    The crop's x axis follows the eye line corrected by the eye-to-mouth direction (so a tilted
    head comes out upright), its half side is max(2.0 x eye distance, 1.8 x eye-to-mouth
    distance) times ``scale``, and its centre sits 10 % of the way from the eyes' midpoint to
    the mouth's.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    points = five_point_landmarks(face).astype(np.float64)
    left_eye, right_eye, _, left_mouth, right_mouth = points
    eye_middle = (left_eye + right_eye) / 2.0
    eye_to_eye = right_eye - left_eye
    eye_to_mouth = (left_mouth + right_mouth) / 2.0 - eye_middle
    # Rotating eye_to_mouth by -90 degrees gives a second estimate of the "right" direction;
    # averaging it with the eye line is robust to one eye being badly placed.
    right_direction = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    right_direction /= np.linalg.norm(right_direction)
    half_side = scale * max(
        _HALF_SIDE_PER_EYE_DISTANCE * np.linalg.norm(eye_to_eye),
        _HALF_SIDE_PER_EYE_TO_MOUTH * np.linalg.norm(eye_to_mouth),
    )
    x_axis = right_direction * half_side
    y_axis = np.array([-x_axis[1], x_axis[0]])  # x_axis turned 90 degrees: pointing down the face
    center = eye_middle + _CENTER_TOWARD_MOUTH * eye_to_mouth
    source = np.array([center - x_axis - y_axis, center + x_axis - y_axis, center - x_axis + y_axis], dtype=np.float32)
    # Corners of the crop in pixel-centre coordinates (edges at -0.5 and size - 0.5).
    target = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5]], dtype=np.float32)
    return cv2.getAffineTransform(source, target).astype(np.float64)


def aligned_square_crop(
    image: np.ndarray,
    face: DetectedFace,
    size: int = 512,
    scale: float = 1.0,
    border: BorderMode = "reflect",
) -> FaceCrop:
    """The aligned whole-head square crop used for training targets and the head prior.

    Args:
        image: (H, W, 3) uint8 RGB.
        face: the face to frame.
        size: output side in pixels.
        scale: > 1 zooms out (more context), < 1 zooms in; 1.0 is the FFHQ framing (the face
            oval spans roughly the middle half of the crop).
        border: how to fill outside the photo: "reflect" (FFHQ's choice; no black bars for the
            diffusion model to learn), "constant" (black) or "replicate".
    Returns:
        FaceCrop with a (size, size, 3) uint8 image.
    """
    transform = aligned_square_transform(face, size, scale)
    return FaceCrop(warp_image(image, transform, size, border=border, interpolation=cv2.INTER_CUBIC), transform)


def clip_face_crop(
    image: np.ndarray,
    face: DetectedFace,
    mask: np.ndarray,
    size: int = 224,
    scale: float = 1.0,
) -> FaceCrop:
    """The reference face as CapHuman shows it to CLIP: aligned square crop, non-face white.

    CapHuman paints every non-face parsing class (background, hair, ears, neck, clothes, hat)
    white on the aligned reference image and lets CLIP's processor resize it to 224. This crop
    uses the same framing as :func:`aligned_square_crop` so CLIP sees faces at the scale the
    model was trained with; pixels outside the photo count as non-face.

    Args:
        image: (H, W, 3) uint8 RGB.
        face: the face to crop.
        mask: (H, W) bool (or 0/1) face-region mask in input-image pixels (from
            :func:`caphuman.faces.mesh_mask.face_mask` or a BiSeNet parsing).
        size: output side in pixels.
        scale: framing, as in :func:`aligned_square_crop`.
    Returns:
        FaceCrop with a (size, size, 3) uint8 image, exactly (255, 255, 255) where the warped
        mask is off.
    """
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape[:2]} does not match image shape {image.shape[:2]}")
    transform = aligned_square_transform(face, size, scale)
    crop = warp_image(image, transform, size, border="constant", interpolation=cv2.INTER_CUBIC)
    # Warp the mask as coverage (0..1) and threshold at one half, the area-weighted vote.
    coverage = warp_image(mask.astype(np.float32), transform, size, border="constant", border_value=0)
    crop[coverage < 0.5] = 255
    return FaceCrop(crop, transform)
