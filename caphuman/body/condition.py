"""The OpenPose ControlNet's map for a run: from a pose photo (body, hands) and the head (face
dots), in the frame the hint is rendered in; or a ready-made OpenPose image. Also the
checks and map-making `caphuman sample` calls (its flags are in caphuman/body/options.py).

Frame: the sample command pads every photo to a square (edge pixels) before the head prior sees
it, renders the hint as a square at the longer side and crops its centre to the image size. The
map is made the same way, so the body from the pose photo, the face dots from the head and the
hint line up. (The official code resizes the photo so its short side is 512 and draws there,
which is the same frame for the square photos it expects.)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from caphuman.body.keypoints import BodyKeypoints, body_keypoints
from caphuman.body.openpose_map import draw_openpose_map, parse_body_modes
from caphuman.config import DEFAULT_BODY_MODES
from caphuman.errors import CapHumanError
from caphuman.faces.images import load_image
from caphuman.head.landmarks import face_points
from caphuman.models.body_controlnet import missing_body_controlnet
from caphuman.weights.registry import weights_entry, weights_path

logger = logging.getLogger(__name__)

BODY_MAP_FILE = "body_map.png"


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pad with edge pixels to a square (the sample command's frame for every photo)."""
    height, width = image.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return np.pad(image, ((top, side - height - top), (left, side - width - left), (0, 0)), mode="edge")


def crop_centre(image: np.ndarray, height: int, width: int) -> np.ndarray:
    side = image.shape[0]
    top, left = (side - height) // 2, (side - width) // 2
    return image[top : top + height, left : left + width]


def pose_map_for(
    photo: np.ndarray,
    height: int,
    width: int,
    modes: str | tuple[str, ...] = DEFAULT_BODY_MODES,
    face_points: np.ndarray | None = None,
    keypoints: BodyKeypoints | None = None,
) -> np.ndarray:
    """The map for an image of ``height`` x ``width``, from a pose photo of any shape.

    Args:
        photo: (H, W, 3) uint8 RGB pose photo (square or not; padded to a square here).
        height, width: the generated image's size.
        modes: layers, "face", "body", "hand".
        face_points: (68, 2) face landmarks as fractions of the square frame
            (caphuman.head.landmarks.face_points); None draws no face dots.
        keypoints: keypoints already found on the padded photo (skips detection).
    Returns:
        (height, width, 3) uint8 RGB map.
    """
    layers = parse_body_modes(modes)
    if keypoints is None and ("body" in layers or "hand" in layers):
        keypoints = body_keypoints(pad_to_square(photo), hands="hand" in layers)
        if not keypoints.found.any():
            logger.warning("No body found in the pose photo; the body map has only the face dots.")
    side = max(height, width)
    return crop_centre(draw_openpose_map(keypoints, face_points, side, side, layers), height, width)


def load_body_map(path: str | Path, height: int, width: int) -> np.ndarray:
    """A ready-made OpenPose image, resized to the image size (Lanczos up, area down, as the
    official resize does)."""
    image = load_image(path)
    if image.shape[:2] == (height, width):
        return image
    upscaling = height * width > image.shape[0] * image.shape[1]
    logger.info("Resizing the body map %s from %dx%d to %dx%d.", path, image.shape[0], image.shape[1], height, width)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LANCZOS4 if upscaling else cv2.INTER_AREA)


# ------------------------------------------------------------------------------------------
# caphuman sample


def check_body_inputs(args: argparse.Namespace, config) -> np.ndarray | None:
    """Before any model loads: the strength needs a ControlNet; a --body-map must be readable.
    Returns the ready-made map (resized to the image size) or None."""
    strength = config.sampling.body_control_strength
    if strength > 0 and config.model.body_controlnet is None:
        raise CapHumanError(
            "--body-control-strength > 0 needs the OpenPose ControlNet: set model.body_controlnet or pass --body-controlnet "
            f"(`caphuman download body_controlnet` fetches {weights_entry('body_controlnet').path})."
        )
    if strength > 0:
        path = weights_path(getattr(args, "weights", "checkpoints"), config.model.body_controlnet)
        if not path.exists():
            raise missing_body_controlnet(path)
    if getattr(args, "body_map", None) and strength == 0:
        logger.warning("--body-map is ignored at --body-control-strength 0 (the OpenPose ControlNet is off).")
    if getattr(args, "body_map", None) and strength > 0:
        return load_body_map(args.body_map, config.sampling.height, config.sampling.width)
    return None


def body_map_for_run(config, ready_made: np.ndarray | None, pose_photo: np.ndarray, prior, params) -> np.ndarray | None:
    """The map for `caphuman sample`: None when the ControlNet is off; the ready-made one when given;
    else drawn from the pose photo (body, hands) and the head ``params`` (face dots)."""
    if config.sampling.body_control_strength == 0:
        return None
    if ready_made is not None:
        return ready_made

    layers = parse_body_modes(config.sampling.body_modes)
    points = None
    if "face" in layers:
        try:
            points = face_points(prior, params)
        except NotImplementedError as error:
            logger.warning("%s The body map has no face dots.", error)
    return pose_map_for(pose_photo, config.sampling.height, config.sampling.width, layers, face_points=points)


__all__ = [
    "BODY_MAP_FILE",
    "body_map_for_run",
    "check_body_inputs",
    "load_body_map",
    "pose_map_for",
]
