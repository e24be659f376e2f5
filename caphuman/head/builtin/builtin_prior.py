"""The built-in head prior: works offline, from mediapipe's face mesh and a morphable face model.

Reconstruction of one face (:meth:`BuiltinHeadPrior.reconstruct`):
1. mediapipe's 478-point 3D face mesh from :class:`caphuman.faces.detection.FaceDetector`,
   turned into the camera frame (x right, y up, z towards the viewer; pixel units).
2. :meth:`MorphableFaceModel.fit <caphuman.head.builtin.morphable_model.MorphableFaceModel.fit>`: a
   similarity fit on the stable points gives rotation (-> yaw, pitch, roll), scale and
   translation (-> the orthographic camera); expression and jaw are solved on the de-posed
   points; identity is the per-vertex remainder.
3. Texture and light: the face mesh is subdivided (each level splits every triangle in four at
   its edge midpoints) so that per-vertex colours carry a usable texture; colours are sampled
   from the photo at the projected vertices. Second-order SH lighting is fitted to the visible
   skin vertices, first against a constant albedo (the median skin colour, which fixes the
   albedo-light scale ambiguity), then against the left-right symmetrised albedo (a face's
   albedo is nearly symmetric, so side lighting ends up in the light, not the texture). Albedo is
   colour / shading; vertices facing away from the camera take their mirror partner's albedo.

Parameters (:class:`caphuman.head.params.HeadParams`, backend "builtin"):
shape (1, 468*3) identity offsets in cm; expression (1, 8) coefficients of
``expression_basis.EXPRESSION_NAMES``; jaw (1, 3) axis-angle radians; rotation, camera as in
params.py; albedo (1, V_fine, 3) per-vertex albedo of the subdivided mesh in [0, 1]; lighting
(1, 9, 3).

The fitted model covers mediapipe's face area only (forehead to chin, cheek to cheek). The
rendered mesh adds a short "skirt" (three rings continuing the face boundary backwards, textured
from the photo around the face) so renders have a head-like outline; there is still no back of
the head, ears, neck or hair as in FLAME's whole head.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch

from caphuman.errors import InputImageError
from caphuman.faces.detection import FaceDetector, select_face
from caphuman.head.builtin.morphable_model import MorphableFaceModel, default_model, mesh_edges, mirror_indices
from caphuman.head.landmarks import project
from caphuman.head.params import HeadParams
from caphuman.head.prior import HeadMesh, HeadPrior
from caphuman.head.renderer import vertex_normals
from caphuman.head.rotations import matrix_to_yaw_pitch_roll, yaw_pitch_roll_to_matrix
from caphuman.head.spherical_harmonics import fit_sh_lighting, sh_shading

logger = logging.getLogger(__name__)

BACKEND_NAME = "builtin"
DEFAULT_SUBDIVISIONS = 2

# The 68 face landmarks (iBUG 300-W layout, caphuman/head/landmarks.py) on mediapipe's face mesh:
# 68-point layout index -> face-mesh vertex, the usual correspondence.
MEDIAPIPE_68: tuple[int, ...] = (
    # jaw line, from the subject's right ear (image left) to the left
    162,
    234,
    93,
    58,
    172,
    136,
    149,
    148,
    152,
    377,
    378,
    365,
    397,
    288,
    323,
    454,
    389,
    # right brow, left brow
    71,
    63,
    105,
    66,
    107,
    336,
    296,
    334,
    293,
    301,
    # nose bridge, nose base
    168,
    197,
    5,
    4,
    75,
    97,
    2,
    326,
    305,
    # right eye, left eye (outer corner, upper lid, inner corner, lower lid)
    33,
    160,
    158,
    133,
    153,
    144,
    362,
    385,
    387,
    263,
    373,
    380,
    # outer lips, inner lips
    61,
    39,
    37,
    0,
    267,
    269,
    291,
    405,
    314,
    17,
    84,
    181,
    78,
    82,
    13,
    312,
    308,
    317,
    14,
    87,
)

# A vertex whose normal makes less than this cosine with the view direction is too oblique for
# its photo colour to be trusted: it takes its mirror partner's albedo instead (blended up to
# _VISIBLE_COSINE).
_OBLIQUE_COSINE = 0.15
_VISIBLE_COSINE = 0.5
# Vertices used to fit the light: clearly visible skin (not lips, eyes or brows, whose albedo
# differs from the skin's), i.e. those with a pose weight above this.
_SKIN_POSE_WEIGHT = 0.5
_LIGHT_RIDGE = 1e-3
# Shading below this is treated as this when dividing colour by shading (deep shadow carries no
# albedo information and would blow up).
_MIN_SHADING = 0.15
# Pre-blur of the photo before sampling vertex colours, as a fraction of the face's width, so a
# vertex colour averages its neighbourhood instead of aliasing single pixels.
_SAMPLE_BLUR_FRACTION = 1.0 / 250.0


# The skirt: rings of vertices that continue the face mesh's outer boundary backwards around the
# head (hairline, temples and ears, under the chin), as (outward, backward) offsets in cm from
# each boundary vertex. mediapipe's face area alone renders as a floating mask, on which
# mediapipe's own landmark model underestimates large head rotations (it sees no head outline);
# the skirt, textured from the photo around the face, gives renders a head-like silhouette.
_SKIRT_RINGS_CM = ((0.7, 1.0), (1.1, 2.6), (1.0, 4.5))
# Outward is away from this point (cm, model frame) in the x-y plane.
_SKIRT_CENTRE_Y_CM = 0.0


def _boundary_loop(faces: np.ndarray) -> np.ndarray:
    """Vertex indices of a mesh's single outer boundary, in walking order."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    # A directed boundary edge has no opposite twin; walking directed edges keeps the loop's
    # orientation consistent with the triangles' winding.
    directed = {(int(a), int(b)) for a, b in edges}
    following = {a: b for a, b in directed if (b, a) not in directed}
    start = min(following)
    loop = [start]
    while following[loop[-1]] != start:
        loop.append(following[loop[-1]])
    return np.array(loop, dtype=np.int64)


class RenderTopology:
    """The rendered mesh: the model's 468 vertices, a skirt around them, then midpoint subdivision.

    Each step is linear in the model's vertices, so :meth:`apply` maps any per-vertex quantity
    (positions, pose weights, colours) from the model to the rendered mesh.

    Attributes:
        skirt_sources: (K,) model vertex that each skirt vertex follows.
        skirt_offsets: (K, 3) its fixed offset in the model frame (cm).
        edges: per subdivision level, (E_l, 2) vertex pairs whose midpoints are appended.
        faces: (F_fine, 3) int64 triangles, counter-clockwise seen from outside.
        num_vertices: V_fine; ``num_skirt_vertices`` K.
    """

    def __init__(self, mean: np.ndarray, faces: np.ndarray, levels: int, skirt: bool = True):
        if levels < 0:
            raise ValueError(f"subdivision levels must be >= 0, got {levels}")
        num_vertices = mean.shape[0]
        loop = _boundary_loop(faces)
        sources, offsets, new_faces = [], [], [faces]
        if skirt:
            outward = mean[loop, :2] - np.array([0.0, _SKIRT_CENTRE_Y_CM])
            outward = np.concatenate([outward / np.linalg.norm(outward, axis=1, keepdims=True), np.zeros((len(loop), 1))], 1)
            previous = loop
            for ring, (out, back) in enumerate(_SKIRT_RINGS_CM):
                current = num_vertices + ring * len(loop) + np.arange(len(loop))
                sources.append(loop)
                offsets.append(out * outward + np.array([0.0, 0.0, -back]))
                following_prev, following_cur = np.roll(previous, -1), np.roll(current, -1)
                # The boundary runs (a -> b) along the face mesh's winding, so the face mesh lies to
                # one side; the quad (b, a, a', b') continues the surface with the same orientation.
                new_faces.append(np.stack([following_prev, previous, current], axis=1))
                new_faces.append(np.stack([following_prev, current, following_cur], axis=1))
                previous = current
            num_vertices += len(_SKIRT_RINGS_CM) * len(loop)
        self.skirt_sources = np.concatenate(sources) if sources else np.zeros(0, dtype=np.int64)
        self.skirt_offsets = np.concatenate(offsets) if offsets else np.zeros((0, 3))
        self.num_skirt_vertices = len(self.skirt_sources)
        faces = np.concatenate(new_faces)
        self.num_vertices_before_subdivision = num_vertices

        self.levels = levels
        self.edges: list[np.ndarray] = []
        for _ in range(levels):
            edges = mesh_edges(faces)
            lookup = np.full((num_vertices, num_vertices), -1, dtype=np.int64)
            lookup[edges[:, 0], edges[:, 1]] = num_vertices + np.arange(len(edges))
            lookup[edges[:, 1], edges[:, 0]] = lookup[edges[:, 0], edges[:, 1]]
            a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
            ab, bc, ca = lookup[a, b], lookup[b, c], lookup[c, a]
            faces = np.concatenate([np.stack(t, axis=1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
            self.edges.append(edges)
            num_vertices += len(edges)
        self.faces = faces
        self.num_vertices = num_vertices

    def apply(self, values: np.ndarray | torch.Tensor, offsets: bool = True) -> np.ndarray | torch.Tensor:
        """Per-vertex values (..., V_model, C) -> (..., V_fine, C).

        Args:
            values: model-vertex values; positions (C = 3, model frame) when ``offsets`` is True.
            offsets: add the skirt's offsets (for positions); False copies the source values
                (for colours, weights and other attributes).
        """
        is_torch = isinstance(values, torch.Tensor)
        cat = torch.cat if is_torch else np.concatenate
        if self.num_skirt_vertices:
            skirt = values[..., self.skirt_sources, :]
            if offsets:
                shift = self.skirt_offsets
                skirt = skirt + (torch.as_tensor(shift, dtype=values.dtype, device=values.device) if is_torch else shift)
            values = cat([values, skirt], -2)
        return self._subdivide(values)

    def skirt_mask(self) -> np.ndarray:
        """(V_fine,) True on the skirt and on midpoints that touch it."""
        indicator = np.zeros((self.num_vertices_before_subdivision, 1))
        indicator[self.num_vertices_before_subdivision - self.num_skirt_vertices :] = 1.0
        return self._subdivide(indicator)[:, 0] > 0

    def _subdivide(self, values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        is_torch = isinstance(values, torch.Tensor)
        cat = torch.cat if is_torch else np.concatenate
        for edges in self.edges:
            if is_torch:
                index = torch.as_tensor(edges, device=values.device)
                mids = (values[..., index[:, 0], :] + values[..., index[:, 1], :]) / 2.0
            else:
                mids = (values[..., edges[:, 0], :] + values[..., edges[:, 1], :]) / 2.0
            values = cat([values, mids], -2)
        return values


class BuiltinHeadPrior(HeadPrior):
    """Offline head prior on mediapipe's face mesh (see the module docstring).

    Args:
        detector: a :class:`caphuman.faces.detection.FaceDetector` to reuse; one is made on first
            use otherwise.
        subdivisions: midpoint-subdivision levels of the rendered mesh, face plus skirt (texture
            resolution: 0 -> 576 vertices, 1 -> 2,265, 2 -> 8,985).
        model: the morphable model (the shared default unless given).
    """

    name = BACKEND_NAME
    trained_with: tuple[str, ...] = ()

    def __init__(self, detector=None, subdivisions: int = DEFAULT_SUBDIVISIONS, model: MorphableFaceModel | None = None):
        self.model = model if model is not None else default_model()
        self._detector = detector
        self.topology = RenderTopology(self.model.mean, self.model.faces, subdivisions)
        fine_mean = self.topology.apply(self.model.mean)
        self.fine_mirror = mirror_indices(fine_mean)
        skin_weight = self.topology.apply(self.model.pose_weights[:, None], offsets=False)[:, 0]
        self.fine_skirt = self.topology.skirt_mask()
        self.fine_skin = (skin_weight > _SKIN_POSE_WEIGHT) & ~self.fine_skirt
        self._faces = torch.as_tensor(self.topology.faces, dtype=torch.long)

    # ------------------------------------------------------------------------------ public API

    @property
    def faces(self) -> torch.Tensor:
        """(F, 3) long triangles of the rendered (subdivided) mesh."""
        return self._faces

    @property
    def num_vertices(self) -> int:
        """Vertices of the rendered (subdivided) mesh, i.e. the V of ``albedo``."""
        return self.topology.num_vertices

    def reconstruct(self, image: np.ndarray, face_index: int = 0, source: str = "the input photo") -> HeadParams:
        """Reconstruct one face of an RGB uint8 (H, W, 3) photo (B = 1).

        Args:
            image: (H, W, 3) uint8 RGB.
            face_index: which face, 0 being the largest.
            source: how to name the photo in error messages (e.g. its path).

        Raises:
            InputImageError: no face (or not that many faces) in the photo.
        """
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputImageError(f"{source} is not an RGB uint8 image (got {getattr(image, 'shape', type(image))}).")
        if self._detector is None:
            self._detector = FaceDetector(max_faces=5)
        # The caller announced the face choice when it picked the face (logged once per photo).
        face = select_face(self._detector.detect(image), face_index, source, announce=False)
        return self.reconstruct_from_landmarks(face.landmarks, image)

    def reconstruct_from_landmarks(self, landmarks: np.ndarray, image: np.ndarray) -> HeadParams:
        """Reconstruct from mediapipe face-mesh points already detected on ``image``.

        Args:
            landmarks: (478, 3) or (468, 3) mediapipe points: x, y in pixels (y down), z =
                mediapipe depth times the image width (smaller is closer).
            image: (H, W, 3) uint8 RGB photo the points belong to (for texture and light).
        """
        height, width = image.shape[:2]
        # mediapipe's image frame (y down, z away) -> camera frame (y up, z towards the viewer):
        # a 180-degree turn about x, so the frame stays right-handed.
        points = np.asarray(landmarks, dtype=np.float64)[: self.model.num_vertices] * np.array([1.0, -1.0, -1.0])
        fit = self.model.fit(points)
        rotation = matrix_to_yaw_pitch_roll(torch.as_tensor(fit.pose.rotation)[None]).float()
        # Pixels -> normalised coordinates x = 2u/W - 1, y = 1 - 2v/H (here Y = -v). One scale
        # serves both axes, so for a non-square photo the mean of the two axis scales is used.
        pixel_to_normalised = 1.0 / width + 1.0 / height
        camera = torch.tensor(
            [
                [
                    fit.pose.scale * pixel_to_normalised,
                    2.0 * fit.pose.translation[0] / width - 1.0,
                    1.0 + 2.0 * fit.pose.translation[1] / height,
                ]
            ],
            dtype=torch.float32,
        )
        params = HeadParams(
            shape=torch.as_tensor(fit.identity.reshape(1, -1), dtype=torch.float32),
            expression=torch.as_tensor(fit.expression[None], dtype=torch.float32),
            jaw=torch.as_tensor(fit.jaw[None], dtype=torch.float32),
            rotation=rotation,
            camera=camera,
            albedo=torch.full((1, self.num_vertices, 3), 0.5),
            lighting=torch.zeros(1, 9, 3),
            backend=self.name,
        )
        params.albedo, params.lighting = self._texture_and_light(params, image)
        logger.debug(
            "builtin prior: yaw %.1f pitch %.1f roll %.1f, identity residual %.2f px",
            *rotation[0].tolist(),
            fit.residual,
        )
        return params

    def mesh(self, params: HeadParams) -> HeadMesh:
        """Posed, subdivided mesh in normalised camera coordinates (see :class:`HeadMesh`)."""
        if params.backend != self.name:
            raise ValueError(f"BuiltinHeadPrior.mesh got parameters of the '{params.backend}' prior.")
        if params.albedo.shape[1:] != (self.num_vertices, 3):
            raise ValueError(
                f"albedo has {params.albedo.shape[1]} vertices but this prior's mesh has {self.num_vertices} "
                f"(subdivisions={self.topology.levels}); use the subdivision level the parameters were made with."
            )
        dtype = torch.float32
        base = self.model.vertices(params.shape.to(dtype), params.expression.to(dtype), params.jaw.to(dtype))
        fine = self.topology.apply(base)  # (B, V_fine, 3) cm, model frame
        rotated = fine @ yaw_pitch_roll_to_matrix(params.rotation.to(dtype)).transpose(1, 2)
        camera = params.camera.to(dtype)
        scale = camera[:, 0, None, None]
        offset = torch.stack([camera[:, 1], camera[:, 2], torch.zeros_like(camera[:, 1])], dim=-1)[:, None, :]
        vertices = rotated * scale + offset
        # This prior has no UV map: its albedo is per vertex (fitted from the photo). Its renders
        # keep unit per-pixel normals and colours clipped to [0, 1], the conventions its own fits
        # and the models trained on its renders use; DECA's unclamped rules are for the DECA prior.
        return HeadMesh(
            vertices=vertices,
            faces=self._faces.to(vertices.device),
            albedo=params.albedo.to(dtype),
            lighting=params.lighting.to(dtype),
            renormalize_normals=True,
            clamp_colours=True,
        )

    def landmarks68(self, params: HeadParams) -> torch.Tensor:
        """(B, 68, 2) face landmarks in normalised camera coordinates (x right, y up), posed like
        :meth:`mesh` (the mesh points at :data:`MEDIAPIPE_68`)."""
        if params.backend != self.name:
            raise ValueError(f"BuiltinHeadPrior.landmarks68 got parameters of the '{params.backend}' prior.")
        dtype = torch.float32
        base = self.model.vertices(params.shape.to(dtype), params.expression.to(dtype), params.jaw.to(dtype))
        return project(base[:, list(MEDIAPIPE_68)], params)

    # ------------------------------------------------------------------------------ internals

    def _texture_and_light(self, params: HeadParams, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-vertex albedo (1, V_fine, 3) and SH lighting (1, 9, 3) from the photo."""
        mesh = self.mesh(params)
        vertices = mesh.vertices[0].double()
        normals = vertex_normals(mesh.vertices, mesh.faces)[0].double()  # camera frame
        height, width = image.shape[:2]
        u = ((vertices[:, 0] + 1.0) * 0.5 * width).numpy()
        v = ((1.0 - vertices[:, 1]) * 0.5 * height).numpy()
        face_width = float(u.max() - u.min())
        blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=max(face_width * _SAMPLE_BLUR_FRACTION, 0.5))
        # Pixel (row i, column j) is the point (j + 0.5, i + 0.5); remap samples at integer centres.
        colours = cv2.remap(
            blurred.astype(np.float32) / 255.0,
            (u - 0.5).astype(np.float32)[None],
            (v - 0.5).astype(np.float32)[None],
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )[0]
        colours = torch.as_tensor(colours, dtype=torch.float64)  # (V, 3)

        facing = normals[:, 2]
        visibility = ((facing - _OBLIQUE_COSINE) / (_VISIBLE_COSINE - _OBLIQUE_COSINE)).clamp(0.0, 1.0)
        samples = torch.as_tensor(self.fine_skin) & (visibility >= 1.0)
        if int(samples.sum()) < 20:  # a face seen edge-on: fall back to whatever is visible
            samples = visibility > 0.0
        skin = colours[samples].median(dim=0).values
        lighting = fit_sh_lighting(normals[samples], colours[samples], skin.expand(int(samples.sum()), 3), ridge=_LIGHT_RIDGE)
        for _ in range(2):
            shading = sh_shading(normals[None], lighting[None])[0].clamp(min=_MIN_SHADING)
            albedo = (colours / shading).clamp(0.0, 1.0)
            albedo = self._fill_from_mirror(albedo, visibility)
            symmetric = (albedo + albedo[self.fine_mirror]) / 2.0
            lighting = fit_sh_lighting(normals[samples], colours[samples], symmetric[samples], ridge=_LIGHT_RIDGE)
        shading = sh_shading(normals[None], lighting[None])[0].clamp(min=_MIN_SHADING)
        albedo = self._fill_from_mirror((colours / shading).clamp(0.0, 1.0), visibility)
        return albedo[None].float(), lighting[None].float()

    def _fill_from_mirror(self, albedo: torch.Tensor, visibility: torch.Tensor) -> torch.Tensor:
        """Blend oblique vertices' albedo towards their (more visible) mirror partner's."""
        mirror_visibility = visibility[self.fine_mirror]
        # How much of the partner to take: all of it when this vertex is hidden and the partner
        # seen; nothing when this vertex is fully visible.
        take = ((1.0 - visibility) * mirror_visibility).clamp(0.0, 1.0)
        filled = albedo * (1.0 - take[:, None]) + albedo[self.fine_mirror] * take[:, None]
        # Neither side visible (a profile view's far cheek and its partner's edge): keep the
        # sampled colour, which is at least the colour of what is in front.
        return filled
