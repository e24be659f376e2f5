"""The DECA / FLAME head prior: the backend the released CapHuman weights were trained with.

DECA (Feng et al., SIGGRAPH 2021) regresses FLAME parameters from a 224 x 224 face crop with a
ResNet-50 followed by two fully connected layers (2048 -> 1024 -> ReLU -> 236). The 236 numbers
are, in this order: shape 100, albedo (texture) 50, expression 50, pose 6 (global rotation 3 +
jaw 3, axis-angle), orthographic camera 3 (s, tx, ty) and SH lighting 27 (9 x RGB). This module
re-implements the coarse encoder (module names match the ``E_flame`` entry of DECA's
deca_model.tar), DECA's crop, and the conversion of its outputs into
:class:`~caphuman.head.params.HeadParams` conventions.

Crop (DECA's test-time crop, as CapHuman runs it): the photo is first resized to a 512 x 512
square (CapHuman's TestData(size=512)); the face box is made square with side
``int(box_size * 1.25)`` and resampled bilinearly to 224 x 224 RGB in [0, 1] (no mean/std
normalisation). Box size and centre follow DECA's two rules: for a 68-landmark box, size =
(w + h) / 2 * 1.1 around the box centre; for a detector box, size = (w + h) / 2 with the centre
moved down by 0.12 * size. Our detector gives mediapipe's 478-point mesh, so the 68-landmark
extent (eyebrows to chin, cheek to cheek) is taken from it.

Frames: FLAME's model frame is already the project's camera frame (x right in the image for a
frontal head, y up, z towards the viewer). DECA projects x_crop = s (X + tx), y_crop = s (Y + ty)
in the crop's [-1, 1] square (y up before DECA flips it for its rasteriser), so the conversion to
whole-image normalised coordinates is only a scale and shift (see :func:`camera_from_deca`).
The global rotation rotates the head about FLAME's root joint; :meth:`DecaHeadPrior.mesh` poses
FLAME the same way, so a reconstructed head lands where DECA would render it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from skimage.transform import AffineTransform, resize, warp
from torch import nn

from caphuman.errors import CapHumanError, InputImageError
from caphuman.head.deca.files import DecaAssetPaths, FlameTexture, load_deca_encoder_state, load_flame_model, load_flame_texture
from caphuman.head.deca.flame import FlameLayer
from caphuman.head.params import HeadParams
from caphuman.head.prior import HeadMesh, HeadPrior, UVTexture
from caphuman.head.rotations import axis_angle_to_matrix, matrix_to_yaw_pitch_roll, yaw_pitch_roll_to_matrix

if TYPE_CHECKING:
    from caphuman.faces.detection import FaceDetector

logger = logging.getLogger(__name__)

# DECA's parameter vector, in order (names as in DECA's code dictionary).
DECA_CODE_LAYOUT: tuple[tuple[str, int], ...] = (
    ("shape", 100),
    ("tex", 50),
    ("exp", 50),
    ("pose", 6),
    ("cam", 3),
    ("light", 27),
)
DECA_CODE_SIZE = sum(size for _, size in DECA_CODE_LAYOUT)  # 236
NUM_SHAPE, NUM_TEXTURE, NUM_EXPRESSION = 100, 50, 50

CROP_SIZE = 224
# DECA renders albedo from a 256 x 256 UV map (cfg.model.uv_size; FLAMETex resizes to it).
UV_SIZE = 256
CROP_SCALE = 1.25
# CapHuman resizes every photo to this square before DECA sees it (TestData(size=512)).
WORKING_SIZE = 512
# DECA's two box rules (datasets.TestData.bbox2point).
LANDMARK_BOX_ENLARGE = 1.1
DETECTOR_BOX_SHIFT = 0.12

# mediapipe face-mesh points of both eyebrows (FACEMESH_LEFT/RIGHT_EYEBROW): the top of a
# 68-landmark box, which DECA's FAN landmarks start at.
_EYEBROW_POINTS = (46, 52, 53, 55, 63, 65, 66, 70, 105, 107, 276, 282, 283, 285, 293, 295, 296, 300, 334, 336)
_MESH_POINTS = 478


# ---------------------------------------------------------------------------------------------
# Encoder


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck: 1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, identity/projection skip."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + skip)


class ResNet50Features(nn.Module):
    """ResNet-50 (He et al. 2016; stages of 3, 4, 6, 3 bottlenecks) up to global average pooling.

    Input (B, 3, 224, 224); output (B, 2048). No classifier head, as in DECA.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            stage = [Bottleneck(channels, width, stride)]
            channels = width * Bottleneck.expansion
            stage += [Bottleneck(channels, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # DECA pools with AvgPool2d(7) on the 7 x 7 map of a 224 crop: the same as a global mean.
        return x.mean(dim=(2, 3))


class DecaCoarseEncoder(nn.Module):
    """DECA's ``E_flame``: ResNet-50 features -> Linear(2048, 1024) -> ReLU -> Linear(1024, 236).

    State-dict keys match deca_model.tar's ``E_flame`` entry: ``encoder.*`` (the ResNet) and
    ``layers.0.*`` / ``layers.2.*`` (the two linear layers).
    """

    def __init__(self, out_features: int = DECA_CODE_SIZE):
        super().__init__()
        self.encoder = ResNet50Features()
        self.layers = nn.Sequential(nn.Linear(self.encoder.out_features, 1024), nn.ReLU(), nn.Linear(1024, out_features))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) RGB crops in [0, 1] -> (B, 236) DECA code vectors."""
        return self.layers(self.encoder(crops))


@dataclass
class DecaCode:
    """DECA's outputs for a batch, split by :data:`DECA_CODE_LAYOUT`.

    Attributes:
        shape: (B, 100) FLAME shape.  tex: (B, 50) FLAME texture.  exp: (B, 50) FLAME expression.
        pose: (B, 6) global (0:3) and jaw (3:6) axis-angle, radians, FLAME frame.
        cam: (B, 3) orthographic (s, tx, ty) in the 224 crop's [-1, 1] square.
        light: (B, 9, 3) SH coefficients per RGB channel.
    """

    shape: torch.Tensor
    tex: torch.Tensor
    exp: torch.Tensor
    pose: torch.Tensor
    cam: torch.Tensor
    light: torch.Tensor

    @classmethod
    def from_vector(cls, vector: torch.Tensor) -> "DecaCode":
        if vector.shape[-1] != DECA_CODE_SIZE:
            raise ValueError(f"DECA code vectors have {DECA_CODE_SIZE} entries, got {vector.shape[-1]}.")
        parts = dict(zip((name for name, _ in DECA_CODE_LAYOUT), vector.split([size for _, size in DECA_CODE_LAYOUT], dim=-1)))
        return cls(
            shape=parts["shape"],
            tex=parts["tex"],
            exp=parts["exp"],
            pose=parts["pose"],
            cam=parts["cam"],
            light=parts["light"].reshape(-1, 9, 3),
        )


def load_deca_encoder(path: str | os.PathLike, device: torch.device | str = "cpu") -> DecaCoarseEncoder:
    """DECA's coarse encoder with the ``E_flame`` weights of deca_model.tar, in eval mode on ``device``.

    Raises:
        CapHumanError: keys missing from the checkpoint or tensors of the wrong shape.
    """
    state = load_deca_encoder_state(path)
    encoder = DecaCoarseEncoder()
    try:
        result = encoder.load_state_dict(state, strict=False)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise CapHumanError(f"DECA checkpoint '{path}' does not fit DECA's coarse encoder: {first}") from error
    # BatchNorm's step counter is absent from checkpoints saved before PyTorch 0.4.1; it is unused.
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing:
        raise CapHumanError(
            f"DECA checkpoint '{path}' lacks {len(missing)} E_flame weight(s), e.g. {', '.join(missing[:3])}."
        )
    if result.unexpected_keys:
        logger.debug("Ignoring %d unused E_flame entries, e.g. %s", len(result.unexpected_keys), result.unexpected_keys[:3])
    return encoder.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Crop and conversions


@dataclass(frozen=True)
class CropWindow:
    """DECA's square crop in the working image: pixels (left, top) .. (left + size, top + size).

    DECA maps the window's first and last pixel to crop pixels 0 and 223 and renders its 224-wide
    [-1, 1] square over 224 pixels, so one crop unit spans ``size * 224 / 223`` image pixels.
    """

    left: float
    top: float
    size: int
    image_size: int

    @property
    def span(self) -> float:
        """Image pixels covered by the crop's [-1, 1] range."""
        return self.size * CROP_SIZE / (CROP_SIZE - 1)


def crop_window_from_face(box: tuple[float, float, float, float], landmarks: np.ndarray | None, image_size: int) -> CropWindow:
    """DECA's crop window for one face in a square working image of side ``image_size``.

    With mediapipe's 478 mesh points the 68-landmark rule is used (eyebrows to chin, cheek to
    cheek, x1.1); otherwise the detector-box rule (centre moved down by 0.12 of the size).
    """
    if landmarks is not None and landmarks.shape[0] == _MESH_POINTS:
        points = landmarks[:, :2].astype(np.float64)
        left, right = points[:, 0].min(), points[:, 0].max()
        top, bottom = points[list(_EYEBROW_POINTS), 1].min(), points[:, 1].max()
        old_size = (right - left + bottom - top) / 2.0 * LANDMARK_BOX_ENLARGE
        center_x, center_y = (left + right) / 2.0, (top + bottom) / 2.0
    else:
        left, top, right, bottom = box
        old_size = (right - left + bottom - top) / 2.0
        center_x, center_y = (left + right) / 2.0, (top + bottom) / 2.0 + old_size * DETECTOR_BOX_SHIFT
    size = int(old_size * CROP_SCALE)
    if size < 2:
        raise InputImageError("The detected face is too small to crop for DECA.")
    return CropWindow(left=center_x - size / 2.0, top=center_y - size / 2.0, size=size, image_size=image_size)


def crop_face(image: np.ndarray, window: CropWindow) -> np.ndarray:
    """Resample DECA's 224 x 224 crop (bilinear, black outside the photo).

    Args:
        image: (S, S, 3) float RGB in [0, 1], the working image.
    Returns:
        (224, 224, 3) float32 RGB in [0, 1].
    """
    step = window.size / (CROP_SIZE - 1)
    # Output pixel (col, row) -> working-image point (left + col * step, top + row * step).
    crop_to_image = AffineTransform(matrix=np.array([[step, 0.0, window.left], [0.0, step, window.top], [0.0, 0.0, 1.0]]))
    return warp(image, crop_to_image, output_shape=(CROP_SIZE, CROP_SIZE), order=1, mode="constant", cval=0.0).astype(np.float32)


def camera_from_deca(cam: torch.Tensor, window: CropWindow) -> torch.Tensor:
    """DECA's crop camera (s, tx, ty) -> our (scale, tx, ty) in whole-image normalised coordinates.

    DECA: crop coordinate c = s (X + t) in [-1, 1] (y up); crop pixel offset (c + 1) / 2 * span
    from the window's corner; our x = 2 u / S - 1 and y = 1 - 2 v / S. Hence
    scale = s * span / S, tx = (2 left + span) / S - 1 + s tx_deca span / S and
    ty = 1 - (2 top + span) / S + s ty_deca span / S.
    """
    size = float(window.image_size)
    ratio = window.span / size
    s, tx, ty = cam.unbind(-1)
    return torch.stack(
        [
            s * ratio,
            (2.0 * window.left + window.span) / size - 1.0 + s * tx * ratio,
            1.0 - (2.0 * window.top + window.span) / size + s * ty * ratio,
        ],
        dim=-1,
    )


def rotation_from_deca(global_axis_angle: torch.Tensor) -> torch.Tensor:
    """DECA's global pose (B, 3) axis-angle -> (B, 3) yaw, pitch, roll degrees.

    FLAME's frame is our camera frame, so the rotation matrix is used as is; e.g. a positive
    rotation about +y carries the nose (+z) towards +x, the image's right: positive yaw.
    """
    return matrix_to_yaw_pitch_roll(axis_angle_to_matrix(global_axis_angle))


# ---------------------------------------------------------------------------------------------
# UV albedo map


def uv_albedo_space(texture: FlameTexture, size: int = UV_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The FLAME texture space at the resolution DECA renders with: (3, size, size) mean, (K, 3, size, size) basis.

    DECA's FLAMETex builds the albedo map at the file's resolution (mean + basis . code) and then
    shrinks it with ``F.interpolate(texture, [256, 256])``, i.e. nearest neighbour (512 -> 256 keeps
    every second texel). Picking texels commutes with the linear combination, so the mean and
    each basis map are picked once here and the per-head map is combined at 256 px (a quarter of
    the memory and work); the values are the same.
    """
    mean = torch.from_numpy(np.ascontiguousarray(texture.mean.transpose(2, 0, 1)))[None]  # (1, 3, H, W)
    basis = torch.from_numpy(texture.basis).permute(3, 2, 0, 1)  # (K, 3, H, W)
    mean = torch.nn.functional.interpolate(mean, size=(size, size), mode="nearest")[0]
    basis = torch.nn.functional.interpolate(basis, size=(size, size), mode="nearest")
    return mean.contiguous(), basis.contiguous()


# ---------------------------------------------------------------------------------------------
# The head prior


class DecaHeadPrior(HeadPrior):
    """DECA reconstruction + FLAME meshes, in the project's :class:`HeadParams` conventions.

    HeadParams made here: shape (1, 100), expression (1, 50), jaw (1, 3) axis-angle, rotation
    (1, 3) degrees, camera (1, 3), albedo (1, 50) FLAME texture coefficients, lighting (1, 9, 3)
    DECA's SH coefficients (DECA's basis order and constants, see
    caphuman/head/spherical_harmonics.py). Meshes are rendered with DECA's SRenderY formulas:
    the albedo map (FLAME texture space at 256 px, see :func:`uv_albedo_space`) is looked up per
    pixel at the interpolated texture coordinate; normals are the interpolated unit vertex
    normals, not renormalised, and feed the SH shading as they are; nothing is clamped.
    """

    name = "deca"
    trained_with = ("caphuman.ckpt",)

    def __init__(
        self,
        weights_dir: str | os.PathLike,
        device: torch.device | str = "cpu",
        detector: FaceDetector | None = None,
        working_size: int = WORKING_SIZE,
    ):
        """Load DECA and FLAME from ``weights_dir`` (see caphuman/head/deca/files.py for the files).

        Args:
            weights_dir: folder with deca/ (or the files themselves).
            device: torch device for the encoder and FLAME.
            detector: object with ``detect(image) -> list[DetectedFace]``; default: a mediapipe
                :class:`caphuman.faces.detection.FaceDetector`, created on first use.
            working_size: side of the square the photo is resized to before detection and
                cropping (CapHuman: 512).
        Raises:
            MissingWeightsError: a DECA/FLAME file is missing.
        """
        paths = DecaAssetPaths.locate(weights_dir)
        self.device = torch.device(device)
        self.working_size = int(working_size)
        self._detector = detector
        self.encoder = load_deca_encoder(paths.deca_model, self.device)
        self.flame = FlameLayer(load_flame_model(paths.flame_model), NUM_SHAPE, NUM_EXPRESSION).to(self.device)
        texture = load_flame_texture(paths.flame_texture, NUM_TEXTURE, paths.head_template)
        faces = self.flame.faces.cpu()
        if texture.uv_faces.shape != tuple(faces.shape):
            raise CapHumanError(f"FLAME texture coordinates cover {texture.uv_faces.shape[0]} triangles but FLAME has {faces.shape[0]}.")
        if texture.uv_faces.size and int(texture.uv_faces.max()) >= texture.uvs.shape[0]:
            raise CapHumanError(f"FLAME texture triangles index {int(texture.uv_faces.max()) + 1} texture coordinates, the file has {texture.uvs.shape[0]}.")
        mean, basis = uv_albedo_space(texture)
        self.albedo_map_mean = mean.to(self.device)  # (3, 256, 256)
        self.albedo_map_basis = basis.to(self.device)  # (K, 3, 256, 256)
        self.uvs = torch.from_numpy(texture.uvs).to(self.device)
        self.uv_faces = torch.from_numpy(texture.uv_faces).to(self.device)
        del texture  # drop the full-resolution basis (about 160 MB at 512 px) now
        self.landmark_embedding = self._load_landmarks(weights_dir)
        logger.info("DECA head prior loaded from %s (FLAME: %d vertices).", paths.deca_model.parent, self.flame.num_vertices)

    def _load_landmarks(self, weights_dir):
        """DECA's landmark_embedding.npy (optional: only the OpenPose map's face dots need it)."""
        from caphuman.head.landmarks import FLAME_LANDMARK_FILE, load_flame_landmarks

        for folder in (Path(weights_dir) / "deca", Path(weights_dir)):
            if (folder / FLAME_LANDMARK_FILE).is_file():
                return load_flame_landmarks(folder / FLAME_LANDMARK_FILE).to(self.device)
        return None

    def landmarks68(self, params: HeadParams) -> torch.Tensor:
        """(B, 68, 2) DECA's ``landmarks2d`` in normalised camera coordinates (x right, y up): on the
        posed mesh of :meth:`mesh`, which already carries the orthographic camera (a barycentric
        point of the camera-mapped mesh is the camera-mapped point)."""
        from caphuman.head.landmarks import flame_landmarks68

        if self.landmark_embedding is None:
            raise NotImplementedError(
                "The 'deca' head prior needs deca/landmark_embedding.npy (DECA's data/ folder) for the 68 face landmarks."
            )
        vertices = self.mesh(params).vertices  # (B, V, 3)
        rotation = yaw_pitch_roll_to_matrix(params.rotation.to(vertices.device, torch.float32))
        return flame_landmarks68(vertices, self.flame.faces, self.landmark_embedding, rotation)[..., :2]

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            from caphuman.faces.detection import FaceDetector

            self._detector = FaceDetector()
        return self._detector

    def working_image(self, image: np.ndarray) -> np.ndarray:
        """The photo as CapHuman's DECA saw it: (S, S, 3) uint8, resized with anti-aliasing."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputImageError(f"Expected an RGB uint8 (H, W, 3) photo, got {getattr(image, 'shape', type(image))}.")
        if image.shape[:2] == (self.working_size, self.working_size):
            return image
        resized = resize(image, (self.working_size, self.working_size), anti_aliasing=True)
        return (resized * 255.0).astype(np.uint8)

    @torch.no_grad()
    def encode(self, crops: torch.Tensor) -> DecaCode:
        """(B, 3, 224, 224) RGB crops in [0, 1] -> :class:`DecaCode`."""
        return DecaCode.from_vector(self.encoder(crops.to(self.device, torch.float32)))

    def reconstruct(self, image: np.ndarray, face_index: int = 0, source: str = "the input photo") -> HeadParams:
        """DECA reconstruction of one face (B = 1); tensors on this prior's device.

        Raises:
            InputImageError: bad image array, no face, or ``face_index`` out of range.
        """
        from caphuman.faces.detection import select_face

        working = self.working_image(image)
        # The caller announced the face choice when it picked the face (logged once per photo).
        face = select_face(self.detector.detect(working), face_index, source, announce=False)
        window = crop_window_from_face(face.box, face.landmarks, self.working_size)
        crop = crop_face(working.astype(np.float32) / 255.0, window)
        code = self.encode(torch.from_numpy(crop).permute(2, 0, 1)[None])
        return self.params_from_code(code, window)

    def params_from_code(self, code: DecaCode, window: CropWindow) -> HeadParams:
        """Convert DECA's outputs for a crop window into :class:`HeadParams`."""
        return HeadParams(
            shape=code.shape.clone(),
            expression=code.exp.clone(),
            jaw=code.pose[:, 3:].clone(),
            rotation=rotation_from_deca(code.pose[:, :3]),
            camera=camera_from_deca(code.cam, window),
            albedo=code.tex.clone(),
            lighting=code.light.clone(),
            backend=self.name,
        )

    def mesh(self, params: HeadParams) -> HeadMesh:
        """FLAME posed by ``params`` in normalised camera coordinates, with its UV albedo map and
        DECA's shading rules (no renormalised normals, no clamping).

        vertices = scale * FLAME(shape, expression, rotation about the root joint, jaw) + (tx, ty, 0);
        z keeps the same scale, so normals and depth order match the image plane.
        """
        if params.backend != self.name:
            raise CapHumanError(f"Head parameters from the '{params.backend}' prior cannot be meshed by the '{self.name}' prior.")
        p = params.to(self.device)
        expected = {"shape": NUM_SHAPE, "expression": NUM_EXPRESSION, "albedo": NUM_TEXTURE}
        for field_name, size in expected.items():
            value = getattr(p, field_name)
            if value.ndim != 2 or value.shape[1] != size:
                raise CapHumanError(f"DECA head parameters need {field_name} of shape (B, {size}), got {tuple(value.shape)}.")
        dtype = torch.float32
        rotations = self.flame.joint_rotations(yaw_pitch_roll_to_matrix(p.rotation.to(dtype)), p.jaw.to(dtype))
        vertices = self.flame(p.shape.to(dtype), p.expression.to(dtype), rotations)
        scale, tx, ty = p.camera.to(dtype).unbind(-1)
        offset = torch.stack([tx, ty, torch.zeros_like(tx)], dim=-1)
        vertices = scale[:, None, None] * vertices + offset[:, None, :]
        # DECA's FLAMETex: mean + basis . code, never clamped (the published hints keep any
        # excursion outside [0, 1]).
        albedo_map = self.albedo_map_mean + torch.einsum("kchw,bk->bchw", self.albedo_map_basis, p.albedo.to(dtype))
        return HeadMesh(
            vertices=vertices,
            faces=self.flame.faces,
            albedo=None,
            lighting=p.lighting.to(dtype),
            texture=UVTexture(image=albedo_map, uvs=self.uvs, uv_faces=self.uv_faces),
            renormalize_normals=False,
            clamp_colours=False,
        )


__all__ = [
    "DECA_CODE_LAYOUT",
    "DECA_CODE_SIZE",
    "CropWindow",
    "DecaCode",
    "DecaCoarseEncoder",
    "DecaHeadPrior",
    "ResNet50Features",
    "camera_from_deca",
    "crop_face",
    "crop_window_from_face",
    "load_deca_encoder",
    "rotation_from_deca",
    "uv_albedo_space",
]
