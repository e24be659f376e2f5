"""Face detection with mediapipe's BlazeFace detector and 478-point face mesh.

Every later step (crops for the recognisers, the CLIP reference crop, the face mask, the head
prior) starts from a :class:`DetectedFace`: a box, a confidence and the dense face mesh, all in
pixels of the input photo.

mediapipe's face mesh runs its own short-range detector first, which misses faces that are
small in a large photo. So the detector also runs the full-range face detector, and for every
detection the mesh did not cover it crops around the detection, runs the mesh on that crop and
maps the points back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import TracebackType

import cv2
import numpy as np

from caphuman.errors import InputImageError
from caphuman.quiet import native_stderr_silenced, open_mediapipe_solution

logger = logging.getLogger(__name__)

NUM_MESH_POINTS = 478  # 468 face-mesh points + 2 x 5 iris points (refine_landmarks=True)

# mediapipe face-mesh indices for the five points ArcFace-style alignment uses. Mediapipe names
# sides from the subject's point of view, so the subject's RIGHT eye (33 outer, 133 inner
# corner) is on the LEFT of a frontal photo, which is the template's "left eye". For the nose,
# point 4 (just above the tip) fits the ArcFace template better than the tip itself (point 1):
# least-squares residual 1.2 px vs 4.0 px on a neutral frontal portrait (matplotlib's
# grace_hopper.jpg), 3.1 vs 6.1 px on skimage's astronaut.
_IMAGE_LEFT_EYE_CORNERS = (33, 133)
_IMAGE_RIGHT_EYE_CORNERS = (362, 263)
_NOSE_TIP = 4
_IMAGE_LEFT_MOUTH_CORNER = 61
_IMAGE_RIGHT_MOUTH_CORNER = 291

# Crop around a detection for the second mesh pass: the square side is this many times the
# detection box's longer side, so the whole head (forehead to chin, ear to ear) is inside.
_RETRY_CROP_CONTEXT = 2.2
# Side of the resampled retry crop: large enough that a face spans ~110 px for the mesh's
# 192 px landmark model, small enough to be cheap.
_RETRY_CROP_SIZE = 256

# Full-range BlazeFace (model_selection=1) finds faces up to ~5 m away; the short-range model
# that the mesh uses internally is tuned for faces within ~2 m of a selfie camera.
_FULL_RANGE_MODEL = 1
_DETECTOR_INPUT_SIZE = 192  # full-range BlazeFace input resolution
# BlazeFace finds faces down to about a tenth of its input's side (measured: a 52 px face in a
# 450 px tile is found, in a 900 px image it is not). A pyramid level is worth running while its
# tiles are at most this many times the smallest face we want.
_TILE_TO_SMALLEST_FACE = 8
# Two boxes are the same face when their intersection covers this much of the smaller one (a
# tile border can cut a face, giving a smaller partial box inside the full one).
_SAME_FACE_OVERLAP = 0.5


@dataclass(frozen=True)
class DetectedFace:
    """One face found in a photo.

    Attributes:
        box: (x0, y0, x1, y1) in pixels of the input image: the bounding box of the mesh points,
            clipped to the image (forehead top to chin, cheek to cheek).
        score: detector confidence in [0, 1]. For a face only the mesh's internal detector found,
            this is the detector threshold it passed (``min_confidence``).
        landmarks: (478, 3) float32 mediapipe face-mesh points: x, y in pixels of the input
            image, z = mediapipe's relative depth times the image width (pixel scale; smaller z
            is closer to the camera, mediapipe's convention).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


def five_point_landmarks(face: DetectedFace) -> np.ndarray:
    """The five alignment points of ArcFace/RetinaFace from the face mesh.

    Eye centres are the midpoints of the eye corners rather than the iris centres, so gaze
    direction does not move the alignment.

    Returns:
        (5, 2) float32 pixel coordinates in this order: image-left eye centre, image-right eye
        centre, nose tip, image-left mouth corner, image-right mouth corner (the order of the
        standard 112 px ArcFace template).
    """
    points = face.landmarks[:, :2].astype(np.float64)
    return np.stack(
        [
            points[list(_IMAGE_LEFT_EYE_CORNERS)].mean(axis=0),
            points[list(_IMAGE_RIGHT_EYE_CORNERS)].mean(axis=0),
            points[_NOSE_TIP],
            points[_IMAGE_LEFT_MOUTH_CORNER],
            points[_IMAGE_RIGHT_MOUTH_CORNER],
        ]
    ).astype(np.float32)


class FaceDetector:
    """Reusable mediapipe face detector + face mesh (static images).

    Holds three mediapipe graphs: the full-range face detector, a face mesh for the whole image
    (up to ``max_faces`` faces) and a single-face mesh for retry crops. Close it with
    :meth:`close` or use it as a context manager.

    Args:
        max_faces: most faces returned per image (the largest ones).
        min_confidence: detector threshold in [0, 1] for BlazeFace and the mesh's detector.
        min_face_size: smallest face side in pixels worth searching for in large photos; it sets
            how finely the detector tiles the image (smaller = slower). Faces the whole-image
            mesh finds are returned whatever their size.
    """

    def __init__(self, max_faces: int = 5, min_confidence: float = 0.5, min_face_size: int = 40):
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, got {max_faces}")
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        # Imported here so that importing caphuman.faces (for types) does not load TFLite.
        import mediapipe as mp

        # mediapipe's C++ logs (TFLite delegate, absl) go straight to stderr: silenced in CLI runs.
        self._quiet = native_stderr_silenced
        self.max_faces = max_faces
        self.min_confidence = min_confidence
        self.min_face_size = min_face_size
        self._detector = open_mediapipe_solution(
            lambda: mp.solutions.face_detection.FaceDetection(model_selection=_FULL_RANGE_MODEL, min_detection_confidence=min_confidence)
        )
        self._mesh = open_mediapipe_solution(
            lambda: mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True,
                refine_landmarks=True,
                max_num_faces=max_faces,
                min_detection_confidence=min_confidence,
            )
        )
        self._crop_mesh = open_mediapipe_solution(
            lambda: mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True,
                refine_landmarks=True,
                max_num_faces=1,
                min_detection_confidence=min_confidence,
            )
        )
        self._closed = False

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Find faces with their 478-point meshes.

        Args:
            image: (H, W, 3) uint8 RGB.
        Returns:
            At most ``max_faces`` faces, largest box area first; [] when there is none.
        """
        if self._closed:
            raise RuntimeError("FaceDetector.detect called after close()")
        image = _check_rgb_uint8(image)
        height, width = image.shape[:2]

        meshes = self._mesh_points(self._mesh, image)
        detections = self._detections(image)

        faces: list[DetectedFace] = []
        for landmarks in meshes:
            box = _landmark_box(landmarks, width, height)
            scores = [score for detection_box, score in detections if _box_center_inside(detection_box, box)]
            # Without a matching detection only the mesh's own detector found the face, with at
            # least this confidence.
            score = max(scores) if scores else self.min_confidence
            faces.append(DetectedFace(box=box, score=score, landmarks=landmarks))

        # Detections no mesh covers: usually small faces in large photos.
        for detection_box, detection_score in sorted(detections, key=lambda item: -item[1]):
            if any(_box_center_inside(detection_box, face.box) for face in faces):
                continue
            landmarks = self._mesh_on_crop(image, detection_box)
            if landmarks is None:
                logger.debug("Face mesh failed on the crop around detection %s; skipping it.", detection_box)
                continue
            box = _landmark_box(landmarks, width, height)
            # The crop may contain a neighbouring face; keep the mesh only if it is this
            # detection's and not a face already found.
            if _box_center_inside(detection_box, box) and not any(_box_center_inside(box, face.box) for face in faces):
                faces.append(DetectedFace(box=box, score=detection_score, landmarks=landmarks))

        faces.sort(key=lambda face: face.area, reverse=True)
        return faces[: self.max_faces]

    def close(self) -> None:
        """Release the mediapipe graphs (idempotent)."""
        if not self._closed:
            with self._quiet():  # graph threads flush their last log lines while closing
                self._detector.close()
                self._mesh.close()
                self._crop_mesh.close()
            self._closed = True

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _detections(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """Full-range BlazeFace boxes (x0, y0, x1, y1 pixels) with scores, over an image pyramid.

        BlazeFace sees its input at 192 x 192, so in a 2000 px photo a 60 px face shrinks to
        6 px and is lost. Besides the whole image, the detector therefore runs on overlapping
        square tiles of half, quarter, ... the image's longer side (while a tile is at least
        ``_TILE_TO_SMALLEST_FACE * min_face_size``), and boxes of the same face are merged.
        """
        height, width = image.shape[:2]
        found = self._detections_in(image, 0, 0, width, height)
        smallest_tile = max(_DETECTOR_INPUT_SIZE, _TILE_TO_SMALLEST_FACE * self.min_face_size)
        tile = max(height, width) / 2.0
        while tile >= smallest_tile:
            side = int(round(tile))
            for y0 in _tile_starts(height, side):
                for x0 in _tile_starts(width, side):
                    found.extend(self._detections_in(image, x0, y0, min(side, width - x0), min(side, height - y0)))
            tile /= 2.0
        return _merge_overlapping(found)

    def _detections_in(
        self, image: np.ndarray, x0: int, y0: int, tile_width: int, tile_height: int
    ) -> list[tuple[tuple[float, float, float, float], float]]:
        """Detections inside one tile, in whole-image pixels."""
        tile = np.ascontiguousarray(image[y0 : y0 + tile_height, x0 : x0 + tile_width])
        with self._quiet():
            result = self._detector.process(tile)
        found = []
        for detection in result.detections or []:
            relative = detection.location_data.relative_bounding_box
            box = (
                x0 + relative.xmin * tile_width,
                y0 + relative.ymin * tile_height,
                x0 + (relative.xmin + relative.width) * tile_width,
                y0 + (relative.ymin + relative.height) * tile_height,
            )
            found.append((box, float(detection.score[0])))
        return found

    @staticmethod
    def _mesh_points(mesh, image: np.ndarray) -> list[np.ndarray]:
        """Run a mediapipe FaceMesh graph; (478, 3) float32 pixel-scale points per face."""
        height, width = image.shape[:2]
        with native_stderr_silenced():
            result = mesh.process(image)
        faces = []
        for face_landmarks in result.multi_face_landmarks or []:
            normalised = np.array([(p.x, p.y, p.z) for p in face_landmarks.landmark], dtype=np.float64)
            if normalised.shape[0] != NUM_MESH_POINTS:
                raise RuntimeError(
                    f"mediapipe returned {normalised.shape[0]} mesh points, expected {NUM_MESH_POINTS} (refine_landmarks=True needs mediapipe 0.10.x)"
                )
            # mediapipe normalises x by width, y by height and z by width (same scale as x).
            pixels = normalised * np.array([width, height, width])
            faces.append(pixels.astype(np.float32))
        return faces

    def _mesh_on_crop(self, image: np.ndarray, detection_box: tuple[float, float, float, float]) -> np.ndarray | None:
        """Mesh a face inside a resampled square crop around a detection, in input-image pixels."""
        x0, y0, x1, y1 = detection_box
        side = _RETRY_CROP_CONTEXT * max(x1 - x0, y1 - y0)
        if side <= 1.0:
            return None
        scale = _RETRY_CROP_SIZE / side
        center_x, center_y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        # crop = scale * (image - (center - side / 2)); the mesh's points come back through the
        # inverse of this map.
        to_crop = np.array([[scale, 0.0, -scale * (center_x - side / 2.0)], [0.0, scale, -scale * (center_y - side / 2.0)]])
        interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
        crop = cv2.warpAffine(
            image,
            to_crop,
            (_RETRY_CROP_SIZE, _RETRY_CROP_SIZE),
            flags=interpolation,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        )
        meshes = self._mesh_points(self._crop_mesh, crop)
        if not meshes:
            return None
        crop_points = meshes[0].astype(np.float64)
        image_points = np.empty_like(crop_points)
        image_points[:, 0] = crop_points[:, 0] / scale + (center_x - side / 2.0)
        image_points[:, 1] = crop_points[:, 1] / scale + (center_y - side / 2.0)
        # z was scaled by the crop's width in crop pixels; undo the resampling like x.
        image_points[:, 2] = crop_points[:, 2] / scale
        return image_points.astype(np.float32)


def detect_faces(image: np.ndarray, max_faces: int = 5) -> list[DetectedFace]:
    """One-shot :meth:`FaceDetector.detect` (builds and closes the graphs; reuse a FaceDetector for many images)."""
    with FaceDetector(max_faces=max_faces) as detector:
        return detector.detect(image)


def select_face(faces: list[DetectedFace], face_index: int, source: str, announce: bool = True, flag: str = "--face-index") -> DetectedFace:
    """Pick one face of a photo, with user-facing errors.

    Args:
        faces: detector output, largest first.
        face_index: which face to use (0 = the largest).
        source: how to name the photo in messages (usually its path).
        announce: log which face was used when there are several (off where the caller
            already did, so the line appears once per photo).
        flag: the option that picks the face, named in messages.
    Raises:
        InputImageError: no face, or ``face_index`` out of range.
    """
    if not faces:
        raise InputImageError(f"No face found in {source}.")
    if not 0 <= face_index < len(faces):
        raise InputImageError(
            f"Face index {face_index} is out of range for {source}, which has {len(faces)} "
            f"face{'s' if len(faces) != 1 else ''} (use {flag} 0 to {len(faces) - 1})."
        )
    if len(faces) > 1 and announce:
        which = "the largest" if face_index == 0 else f"number {face_index} by size, 0 being the largest"
        logger.info(
            "Found %d faces in %s; using face %d (%s). Use %s to pick another.",
            len(faces),
            source,
            face_index,
            which,
            flag,
        )
    return faces[face_index]


def _check_rgb_uint8(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got {getattr(image, 'shape', type(image))}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image, got dtype {image.dtype}")
    # mediapipe needs a C-contiguous buffer (flipped views are not).
    return np.ascontiguousarray(image)


def _landmark_box(landmarks: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0 = landmarks[:, :2].min(axis=0)
    x1, y1 = landmarks[:, :2].max(axis=0)
    return (
        float(np.clip(x0, 0, width)),
        float(np.clip(y0, 0, height)),
        float(np.clip(x1, 0, width)),
        float(np.clip(y1, 0, height)),
    )


def _box_center_inside(inner: tuple[float, float, float, float], outer: tuple[float, float, float, float]) -> bool:
    center_x, center_y = (inner[0] + inner[2]) / 2.0, (inner[1] + inner[3]) / 2.0
    return outer[0] <= center_x <= outer[2] and outer[1] <= center_y <= outer[3]


def _tile_starts(length: int, side: int) -> list[int]:
    """Start offsets of tiles of ``side`` covering ``length`` with at least 50 % overlap."""
    if length <= side:
        return [0]
    count = int(np.ceil((length - side) / (side / 2.0))) + 1
    return [int(round(start)) for start in np.linspace(0, length - side, count)]


def _merge_overlapping(
    detections: list[tuple[tuple[float, float, float, float], float]],
) -> list[tuple[tuple[float, float, float, float], float]]:
    """Greedy suppression: keep the best-scoring box of each group of boxes of the same face."""
    kept: list[tuple[tuple[float, float, float, float], float]] = []
    for box, score in sorted(detections, key=lambda item: -item[1]):
        if all(_overlap_of_smaller(box, other) < _SAME_FACE_OVERLAP for other, _ in kept):
            kept.append((box, score))
    return kept


def _overlap_of_smaller(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection area divided by the smaller box's area (1.0 when one contains the other)."""
    intersection_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    intersection_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return intersection_w * intersection_h / smaller if smaller > 0 else 0.0
