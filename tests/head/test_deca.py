"""DECA / FLAME head prior: FLAME layer, file readers in the real formats, encoder layout, end to end.

The assets are built here in the released files' formats: a protocol-2 pickle whose arrays are
objects of classes registered as ``chumpy.ch.Ch`` / ``chumpy.reordering.*`` (as in FLAME's
generic_model.pkl) with a scipy csc J_regressor, a torch.save'd dict with ``E_flame`` for
deca_model.tar, and an npz with mean/tex_dir/vt/ft in 0..255 BGR for FLAME_texture.npz. The FLAME
is tiny (500 vertices) but keeps FLAME's 5 joints, 400 blendshapes and 36 pose correctives.
"""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial import ConvexHull
from scipy.spatial.transform import Rotation

from caphuman.errors import CapHumanError, InputImageError, MissingWeightsError
from caphuman.head.deca.crop import CropWindow, camera_from_deca
from caphuman.head.deca.deca_prior import DecaHeadPrior, rotation_from_deca, uv_albedo_space
from caphuman.head.deca.encoder import DECA_CODE_SIZE, DecaCoarseEncoder, load_deca_encoder
from caphuman.head.deca.files import DecaAssetPaths, load_flame_model, load_flame_pickle, load_flame_texture
from caphuman.head.deca.flame import FlameLayer, FlameModelData
from caphuman.head.hint import render_hint
from caphuman.head.params import HeadParams
from caphuman.head.renderer import MeshRenderer
from caphuman.head.rotations import axis_angle_to_matrix, matrix_to_axis_angle

NUM_VERTICES = 500
HEAD_RADIUS = 0.1  # metres, about a real head's half-width
TEXTURE_SIZE = 16
TEXTURE_COMPONENTS = 60


# ---------------------------------------------------------------------------------------------
# Tiny FLAME in generic_model.pkl's layout


def make_tiny_flame(seed: int = 0) -> dict:
    """Arrays of a 500-vertex FLAME-like head: template on an ellipsoid, joints from vertex subsets.

    Jaw-weighted vertices (lower front) carry all their weight on the jaw joint and are the only
    ones with pose correctives, so a jaw rotation moves nothing else.
    """
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(NUM_VERTICES, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    v_template = directions * np.array([0.8, 1.0, 0.9]) * HEAD_RADIUS
    faces = ConvexHull(directions).simplices
    # Qhull's simplices come in either winding; turn each counter-clockwise seen from outside, as
    # FLAME's are (vertex normals then point outwards).
    corners = directions[faces]
    outward = (np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]) * corners.mean(axis=1)).sum(axis=1) > 0
    faces = np.where(outward[:, None], faces, faces[:, ::-1]).astype(np.uint32)

    jaw = (directions[:, 1] < -0.3) & (directions[:, 2] > 0.0)
    eyes = (directions[:, 1] > 0.2) & (directions[:, 2] > 0.8)
    left_eye, right_eye = eyes & (directions[:, 0] > 0), eyes & (directions[:, 0] <= 0)
    weights = np.zeros((NUM_VERTICES, 5))
    rest = ~(jaw | eyes)
    weights[rest, 0], weights[rest, 1] = 0.6, 0.4
    weights[jaw, 2] = 1.0
    weights[left_eye, 3] = 1.0
    weights[right_eye, 4] = 1.0

    def mean_of(mask: np.ndarray) -> np.ndarray:
        row = np.zeros(NUM_VERTICES)
        row[mask] = 1.0 / mask.sum()
        return row

    neck = directions[:, 1] < -0.7
    regressor = np.stack([mean_of(np.ones(NUM_VERTICES, bool)), mean_of(neck), mean_of(jaw), mean_of(left_eye), mean_of(right_eye)])
    posedirs = np.zeros((NUM_VERTICES, 3, 36))
    posedirs[jaw] = rng.normal(scale=0.01, size=(int(jaw.sum()), 3, 36))
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(scale=0.005, size=(NUM_VERTICES, 3, 400)),
        "posedirs": posedirs,
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "weights": weights,
        # FLAME stores the root's parent as uint32 max.
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "f": faces,
        "J": regressor @ v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "jaw_mask": jaw,
    }


def flame_data(arrays: dict) -> FlameModelData:
    return FlameModelData(
        v_template=arrays["v_template"],
        shapedirs=arrays["shapedirs"],
        posedirs=arrays["posedirs"],
        j_regressor=arrays["J_regressor"].toarray(),
        weights=arrays["weights"],
        parents=np.array([-1, 0, 1, 1, 1]),
        faces=arrays["f"].astype(np.int64),
    )


def fake_chumpy_modules(monkeypatch) -> dict[str, type]:
    """Register stand-in chumpy classes under chumpy's module names (for writing files only)."""

    def make_class(module: str, name: str) -> type:
        cls = type(name, (object,), {})
        cls.__module__ = module
        cls.__qualname__ = name
        return cls

    ch_module, reordering = types.ModuleType("chumpy.ch"), types.ModuleType("chumpy.reordering")
    classes = {
        "Ch": make_class("chumpy.ch", "Ch"),
        "Select": make_class("chumpy.reordering", "Select"),
        "transpose": make_class("chumpy.reordering", "transpose"),
    }
    ch_module.Ch = classes["Ch"]
    reordering.Select, reordering.transpose = classes["Select"], classes["transpose"]
    package = types.ModuleType("chumpy")
    package.ch, package.reordering = ch_module, reordering
    monkeypatch.setitem(sys.modules, "chumpy", package)
    monkeypatch.setitem(sys.modules, "chumpy.ch", ch_module)
    monkeypatch.setitem(sys.modules, "chumpy.reordering", reordering)
    return classes


def chumpy_object(cls: type, **state) -> object:
    """An object whose pickled state looks like chumpy's (its bookkeeping fields included)."""
    obj = cls.__new__(cls)
    obj.__dict__.update({"_dirty_vars": set(), "_itr": None, "_depends_on_deps": {}, "_make_dense": False, "_make_sparse": False})
    obj.__dict__.update(state)
    return obj


def write_flame_pickle(path: Path, arrays: dict, monkeypatch) -> None:
    classes = fake_chumpy_modules(monkeypatch)
    content = {key: value for key, value in arrays.items() if key != "jaw_mask"}
    for key in ("v_template", "shapedirs", "weights"):
        content[key] = chumpy_object(classes["Ch"], x=np.asarray(content[key]))
    with open(path, "wb") as stream:
        pickle.dump(content, stream, protocol=2)
    monkeypatch.undo()


def vertex_uvs(vertices: np.ndarray) -> np.ndarray:
    """Per-vertex texture coordinates inside [0.1, 0.9] (away from the texture border)."""
    x, y = vertices[:, 0], vertices[:, 1]
    return np.stack([0.5 + 0.4 * x / np.abs(x).max(), 0.5 + 0.4 * y / np.abs(y).max()], axis=1)


def make_texture(arrays: dict) -> dict:
    """FLAME_texture.npz content: mean is linear in u per channel; stored BGR in 0..255."""
    columns = (np.arange(TEXTURE_SIZE) + 0.5) / TEXTURE_SIZE
    mean_rgb = np.zeros((TEXTURE_SIZE, TEXTURE_SIZE, 3))
    mean_rgb[..., 0] = 40.0 + 160.0 * columns[None, :]  # red grows with u
    mean_rgb[..., 1] = 100.0
    mean_rgb[..., 2] = 220.0
    tex_dir_rgb = np.zeros((TEXTURE_SIZE, TEXTURE_SIZE, 3, TEXTURE_COMPONENTS))
    tex_dir_rgb[..., 1, 0] = 10.0  # component 0 brightens green everywhere
    tex_dir_rgb[..., 2, 1] = -10.0  # component 1 darkens blue everywhere
    return {
        "mean": mean_rgb[:, :, ::-1].copy(),
        "tex_dir": tex_dir_rgb[:, :, ::-1].copy(),
        "vt": vertex_uvs(arrays["v_template"]),
        "ft": arrays["f"].astype(np.int64),
    }


# DECA code the test encoder always outputs (zero last-layer weights, this bias): a frontal head
# filling the crop (s = 9 on a 0.1 m head), yaw of 0.3 rad and a slightly open jaw.
FIXED_SCALE = 9.0
FIXED_YAW_RADIANS = 0.3


def fixed_code() -> torch.Tensor:
    code = torch.zeros(DECA_CODE_SIZE)
    code[200 + 1] = FIXED_YAW_RADIANS  # pose[1]: global rotation about +y
    code[200 + 3] = 0.1  # jaw opening about +x
    code[206] = FIXED_SCALE  # cam s; tx = ty = 0
    code[209] = 1.0  # ambient light on every channel (first SH coefficient, R)
    code[210] = 1.0
    code[211] = 1.0
    code[:100] = torch.linspace(-1, 1, 100)
    return code


@pytest.fixture(scope="module")
def assets_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    folder = root / "deca"
    folder.mkdir()
    arrays = make_tiny_flame()
    monkeypatch = pytest.MonkeyPatch()
    write_flame_pickle(folder / "generic_model.pkl", arrays, monkeypatch)
    np.savez(folder / "FLAME_texture.npz", **make_texture(arrays))
    torch.manual_seed(0)
    encoder = DecaCoarseEncoder()
    with torch.no_grad():
        encoder.layers[2].weight.zero_()
        encoder.layers[2].bias.copy_(fixed_code())
    torch.save(
        {"E_flame": encoder.state_dict(), "E_detail": {"encoder.conv1.weight": torch.zeros(64, 3, 7, 7)}, "D_detail": {}},
        folder / "deca_model.tar",
    )
    return root


@pytest.fixture(scope="module")
def prior(assets_dir) -> DecaHeadPrior:
    return DecaHeadPrior(assets_dir)


# ---------------------------------------------------------------------------------------------
# FLAME layer


@pytest.fixture(scope="module")
def tiny() -> dict:
    return make_tiny_flame()


@pytest.fixture(scope="module")
def layer(tiny) -> FlameLayer:
    return FlameLayer(flame_data(tiny), num_shape=100, num_expression=50).double()


def rest_rotations(batch: int = 1) -> torch.Tensor:
    return torch.eye(3, dtype=torch.float64).expand(batch, 5, 3, 3).clone()


def test_zero_parameters_give_the_template(layer, tiny):
    vertices = layer(torch.zeros(1, 100, dtype=torch.float64), torch.zeros(1, 50, dtype=torch.float64), rest_rotations())
    np.testing.assert_allclose(vertices[0].numpy(), tiny["v_template"], atol=1e-7)


def test_blendshapes_add_linearly(layer, tiny):
    shape = torch.zeros(1, 100, dtype=torch.float64)
    expression = torch.zeros(1, 50, dtype=torch.float64)
    shape[0, 3], shape[0, 99], expression[0, 2] = 1.5, -0.5, -2.0
    vertices = layer(shape, expression, rest_rotations())[0].numpy()
    # Expression components start at index 300 of FLAME's shapedirs.
    expected = tiny["v_template"] + 1.5 * tiny["shapedirs"][:, :, 3] - 0.5 * tiny["shapedirs"][:, :, 99] - 2.0 * tiny["shapedirs"][:, :, 302]
    np.testing.assert_allclose(vertices, expected, atol=1e-7)


def test_global_rotation_is_rigid_about_the_root_joint(layer, tiny):
    rotation = Rotation.from_rotvec([0.2, -0.5, 0.3]).as_matrix()
    rotations = rest_rotations()
    rotations[0, 0] = torch.from_numpy(rotation)
    vertices = layer(torch.zeros(1, 100, dtype=torch.float64), torch.zeros(1, 50, dtype=torch.float64), rotations)[0].numpy()
    root = tiny["J_regressor"].toarray()[0] @ tiny["v_template"]
    expected = (tiny["v_template"] - root) @ rotation.T + root
    np.testing.assert_allclose(vertices, expected, atol=1e-7)


def test_jaw_rotation_moves_only_jaw_vertices(layer, tiny):
    jaw_rotation = Rotation.from_rotvec([0.35, 0.05, 0.0]).as_matrix()
    rotations = rest_rotations()
    rotations[0, 2] = torch.from_numpy(jaw_rotation)
    vertices = layer(torch.zeros(1, 100, dtype=torch.float64), torch.zeros(1, 50, dtype=torch.float64), rotations)[0].numpy()
    jaw, template = tiny["jaw_mask"], tiny["v_template"]
    assert jaw.sum() > 20 and (~jaw).sum() > 20
    np.testing.assert_allclose(vertices[~jaw], template[~jaw], atol=1e-7)
    # Jaw vertices: pose corrective from (R_jaw - I) in the jaw's 9 slots, then rotation about the jaw joint.
    feature = np.zeros(36)
    feature[9:18] = (jaw_rotation - np.eye(3)).ravel()
    corrected = template + tiny["posedirs"] @ feature
    jaw_joint = tiny["J_regressor"].toarray()[2] @ template
    expected = (corrected[jaw] - jaw_joint) @ jaw_rotation.T + jaw_joint
    np.testing.assert_allclose(vertices[jaw], expected, atol=1e-7)
    assert np.abs(vertices[jaw] - template[jaw]).max() > 1e-3


def test_axis_angle_conversions_match_scipy():
    vectors = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.9], [1e-7, 0.0, 0.0], [-2.0, 1.0, 0.5]], dtype=torch.float64)
    matrices = axis_angle_to_matrix(vectors)
    np.testing.assert_allclose(matrices.numpy(), Rotation.from_rotvec(vectors.numpy()).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(matrix_to_axis_angle(matrices).numpy(), vectors.numpy(), atol=1e-7)


# ---------------------------------------------------------------------------------------------
# File readers


def test_chumpy_pickle_loads_as_numpy(assets_dir, tiny):
    data = load_flame_pickle(assets_dir / "deca" / "generic_model.pkl")
    for key in ("v_template", "shapedirs", "weights", "posedirs"):
        assert isinstance(data[key], np.ndarray)
        np.testing.assert_array_equal(data[key], tiny[key])
    assert scipy.sparse.issparse(data["J_regressor"])
    np.testing.assert_array_equal(data["J_regressor"].toarray(), tiny["J_regressor"].toarray())
    model = load_flame_model(assets_dir / "deca" / "generic_model.pkl")
    assert model.parents.tolist() == [-1, 0, 1, 1, 1]
    assert model.faces.dtype == np.int64 and model.faces.shape == tiny["f"].shape


def test_chumpy_reordering_objects_are_evaluated(tmp_path, monkeypatch):
    classes = fake_chumpy_modules(monkeypatch)
    base = chumpy_object(classes["Ch"], x=np.arange(12.0).reshape(3, 4))
    content = {
        "selected": chumpy_object(classes["Select"], a=base, idxs=np.array([1, 5, 7, 11]), preferred_shape=(2, 2)),
        "transposed": chumpy_object(classes["transpose"], a=base, axes=None),
    }
    path = tmp_path / "reordered.pkl"
    path.write_bytes(pickle.dumps(content, protocol=2))
    monkeypatch.undo()
    assert "chumpy" not in sys.modules
    data = load_flame_pickle(path)
    np.testing.assert_array_equal(data["selected"], [[1.0, 5.0], [7.0, 11.0]])
    np.testing.assert_array_equal(data["transposed"], np.arange(12.0).reshape(3, 4).T)


def test_unpickler_refuses_code_references(tmp_path):
    marker = tmp_path / "pwned"
    # Protocol 0 by hand: call os.system("touch <marker>") while unpickling.
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(payload)
    with pytest.raises(CapHumanError, match=r"os\.system"):
        load_flame_pickle(path)
    assert not marker.exists()


def test_texture_reader_flips_bgr_and_scales(assets_dir):
    texture = load_flame_texture(assets_dir / "deca" / "FLAME_texture.npz", num_components=50)
    assert texture.mean.shape == (TEXTURE_SIZE, TEXTURE_SIZE, 3) and texture.basis.shape == (TEXTURE_SIZE, TEXTURE_SIZE, 3, 50)
    np.testing.assert_allclose(texture.mean[..., 2], 220.0 / 255.0, rtol=1e-6)  # blue, stored first
    np.testing.assert_allclose(texture.basis[..., 1, 0], 10.0 / 255.0, rtol=1e-6)


def test_missing_files_are_named(tmp_path, assets_dir):
    with pytest.raises(MissingWeightsError, match="deca_model.tar") as error:
        DecaAssetPaths.locate(tmp_path)
    assert "github.com/yfeng95/DECA" in str(error.value)
    (tmp_path / "deca").mkdir()
    (tmp_path / "deca" / "deca_model.tar").write_bytes((assets_dir / "deca" / "deca_model.tar").read_bytes()[:10])
    with pytest.raises(MissingWeightsError, match="generic_model.pkl") as error:
        DecaAssetPaths.locate(tmp_path)
    assert str(tmp_path / "deca" / "generic_model.pkl") in str(error.value)
    assert "flame.is.tue.mpg.de" in str(error.value)


# ---------------------------------------------------------------------------------------------
# Encoder


def test_encoder_keys_match_published_deca_names():
    state = DecaCoarseEncoder().state_dict()
    published = {
        "encoder.conv1.weight": (64, 3, 7, 7),
        "encoder.bn1.running_mean": (64,),
        "encoder.layer1.0.conv1.weight": (64, 64, 1, 1),
        "encoder.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "encoder.layer3.5.conv2.weight": (256, 256, 3, 3),
        "encoder.layer4.2.bn3.running_var": (2048,),
        "layers.0.weight": (1024, 2048),
        "layers.0.bias": (1024,),
        "layers.2.weight": (236, 1024),
        "layers.2.bias": (236,),
    }
    for key, shape in published.items():
        assert tuple(state[key].shape) == shape, key


def test_encoder_trunk_is_torchvision_resnet50():
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet50()
    reference.fc = torch.nn.Identity()
    reference.eval()
    encoder = DecaCoarseEncoder().eval()
    expected_keys = {key for key in reference.state_dict() if not key.startswith("fc.")}
    assert set(encoder.encoder.state_dict()) == expected_keys
    encoder.encoder.load_state_dict(reference.state_dict(), strict=True)
    images = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encoder(images), reference(images), rtol=1e-4, atol=1e-5)


def test_encoder_checkpoint_errors(tmp_path):
    state = DecaCoarseEncoder().state_dict()
    del state["layers.2.weight"]
    torch.save({"E_flame": state}, tmp_path / "missing.tar")
    with pytest.raises(CapHumanError, match="layers.2.weight"):
        load_deca_encoder(tmp_path / "missing.tar")
    state["layers.2.weight"] = torch.zeros(200, 1024)
    state["layers.2.bias"] = torch.zeros(200)
    torch.save({"E_flame": state}, tmp_path / "wrong.tar")
    with pytest.raises(CapHumanError, match="layers.2"):
        load_deca_encoder(tmp_path / "wrong.tar")
    torch.save({"E_detail": {}}, tmp_path / "no_flame.tar")
    with pytest.raises(CapHumanError, match="E_flame"):
        load_deca_encoder(tmp_path / "no_flame.tar")


# ---------------------------------------------------------------------------------------------
# Conversions


@pytest.mark.parametrize(
    "axis_angle, expected",
    [
        ((0.0, 0.4, 0.0), (22.918, 0.0, 0.0)),  # about +y: nose (+z) towards +x, the image's right
        ((0.4, 0.0, 0.0), (0.0, 22.918, 0.0)),  # about +x: nose towards -y, down
        ((0.0, 0.0, 0.4), (0.0, 0.0, 22.918)),  # about +z: counter-clockwise in the image
    ],
)
def test_deca_rotation_to_yaw_pitch_roll(axis_angle, expected):
    angles = rotation_from_deca(torch.tensor([axis_angle], dtype=torch.float64))
    np.testing.assert_allclose(angles[0].numpy(), expected, atol=1e-3)


def test_camera_conversion_follows_decas_crop_pixels():
    window = CropWindow(left=100.0, top=60.0, size=200, image_size=512)
    cam = torch.tensor([[8.0, 0.02, -0.05]], dtype=torch.float64)
    point = np.array([0.03, 0.04])  # a FLAME point (x, y), metres
    scale, tx, ty = camera_from_deca(cam, window)[0].tolist()
    ours = np.array([scale * point[0] + tx, scale * point[1] + ty])
    # DECA's chain: crop NDC with y pointing down, crop pixels over 224, back through its
    # similarity transform (window corner -> pixel 0, far corner -> pixel 223).
    s, dx, dy = cam[0].tolist()
    ndc = np.array([s * (point[0] + dx), -s * (point[1] + dy)])
    crop_pixel = (ndc + 1.0) / 2.0 * 224.0
    image_pixel = np.array([100.0, 60.0]) + crop_pixel * 200.0 / 223.0
    expected = np.array([image_pixel[0] / 512.0 * 2.0 - 1.0, 1.0 - image_pixel[1] / 512.0 * 2.0])
    np.testing.assert_allclose(ours, expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# End to end on the astronaut


def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


def test_reconstruct_and_mesh_the_astronaut(prior, tiny):
    pytest.importorskip("mediapipe")
    params = prior.reconstruct(astronaut())
    assert params.backend == "deca"
    shapes = {"shape": (1, 100), "expression": (1, 50), "jaw": (1, 3), "rotation": (1, 3), "camera": (1, 3), "albedo": (1, 50), "lighting": (1, 9, 3)}
    for name, shape in shapes.items():
        value = getattr(params, name)
        assert tuple(value.shape) == shape, name
        assert torch.isfinite(value).all(), name
    # The test encoder always answers fixed_code(): check that it went through the conversions.
    np.testing.assert_allclose(params.rotation[0].numpy(), [np.degrees(FIXED_YAW_RADIANS), 0.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(params.jaw[0].numpy(), [0.1, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(params.shape[0].numpy(), np.linspace(-1, 1, 100), atol=1e-6)

    mesh = prior.mesh(params)
    assert mesh.vertices.shape == (1, NUM_VERTICES, 3) and mesh.faces.shape == tiny["f"].shape
    assert torch.isfinite(mesh.vertices).all()
    # DECA's renderer: albedo from the 256 px UV map, looked up per pixel; its own shading rules.
    assert mesh.albedo is None and mesh.texture.image.shape == (1, 3, 256, 256)
    assert mesh.texture.uv_faces.shape == mesh.faces.shape
    assert not mesh.renormalize_normals and not mesh.clamp_colours
    assert mesh.lighting.shape == (1, 9, 3)
    # With tx = ty = 0 the FLAME origin lands at the centre of DECA's crop, which sits on the
    # astronaut's face (in the 512 px photo her face spans roughly x 170..280, y 60..190).
    scale, tx, ty = params.camera[0].tolist()
    centre_u, centre_v = (tx + 1) / 2 * 512, (1 - ty) / 2 * 512
    assert 170 < centre_u < 280 and 60 < centre_v < 190
    # s = 9 on a 0.1 m head: the head spans most of the 1.25x-enlarged face crop, i.e. its
    # projected width is comparable to the face's (~100 px of 512).
    xs = (mesh.vertices[0, :, 0].numpy() + 1) / 2 * 512
    assert 80 < xs.max() - xs.min() < 250
    assert mesh.vertices[..., :2].abs().max() <= 1.0


def test_no_face_is_an_input_error(prior):
    pytest.importorskip("mediapipe")
    with pytest.raises(InputImageError, match="No face"):
        prior.reconstruct(np.full((256, 256, 3), 127, np.uint8))


def flametex_formula(archive: dict, code: np.ndarray) -> np.ndarray:
    """DECA's FLAMETex (tex_type "FLAME"), written from its formula, generalised from 512 px to the
    file's size: mean/255 + (tex_dir/255)[..., :K] . code, as (3, H, W); ``F.interpolate(.., [256, 256])``
    (nearest: output row i reads row floor(i H / 256)); then channels [2, 1, 0]. Returns (3, 256, 256)."""
    height, width = archive["mean"].shape[:2]
    mean = archive["mean"].reshape(1, -1) / 255.0
    basis = archive["tex_dir"].reshape(-1, archive["tex_dir"].shape[-1])[:, : len(code)] / 255.0
    texture = (mean + (basis * code[None, :]).sum(-1)).reshape(height, width, 3).transpose(2, 0, 1)
    rows = np.floor(np.arange(256) * height / 256).astype(int)
    columns = np.floor(np.arange(256) * width / 256).astype(int)
    return texture[:, rows][:, :, columns][[2, 1, 0]]


def test_albedo_map_is_decas_flametex_at_256_px(tmp_path):
    rng = np.random.default_rng(5)
    archive = {
        "mean": rng.uniform(0, 255, (32, 32, 3)),
        "tex_dir": rng.normal(scale=20.0, size=(32, 32, 3, 60)),
        "vt": rng.uniform(0, 1, (10, 2)),
        "ft": rng.integers(0, 10, (7, 3)),
    }
    np.savez(tmp_path / "FLAME_texture.npz", **archive)
    mean, basis = uv_albedo_space(load_flame_texture(tmp_path / "FLAME_texture.npz", num_components=50))
    code = rng.normal(size=50)
    ours = mean + torch.einsum("kchw,k->chw", basis, torch.from_numpy(code).float())
    np.testing.assert_allclose(ours.numpy(), flametex_formula(archive, code), rtol=1e-5, atol=1e-4)


def test_prior_meshes_carry_the_albedo_map_of_their_code(prior, tiny):
    code = np.zeros(50)
    code[0], code[1] = 3.0, 2.0
    params = HeadParams(
        shape=torch.zeros(1, 100),
        expression=torch.zeros(1, 50),
        jaw=torch.zeros(1, 3),
        rotation=torch.zeros(1, 3),
        camera=torch.tensor([[5.0, 0.0, 0.0]]),
        albedo=torch.from_numpy(code).float()[None],
        lighting=torch.zeros(1, 9, 3),
        backend="deca",
    )
    mesh = prior.mesh(params)
    expected = flametex_formula(make_texture(tiny), code)
    np.testing.assert_allclose(mesh.texture.image[0].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(mesh.texture.uvs.numpy(), vertex_uvs(tiny["v_template"]), atol=1e-6)


def test_deca_hint_keeps_decas_unclamped_render(prior):
    """The hint is [normals, albedo, albedo x shading] with DECA's rules: bright light pushes the
    shaded render above 1 and a dark albedo code below 0, and neither is clipped."""
    lighting = torch.zeros(1, 9, 3)
    lighting[0, 0] = 8.0
    params = HeadParams(
        shape=torch.zeros(1, 100),
        expression=torch.zeros(1, 50),
        jaw=torch.zeros(1, 3),
        rotation=torch.zeros(1, 3),
        camera=torch.tensor([[5.0, 0.0, 0.0]]),
        albedo=torch.zeros(1, 50),
        lighting=lighting,
        backend="deca",
    )
    params.albedo[0, 1] = 25.0  # blue: 220 - 250 < 0
    head = render_hint(prior, params, image_size=96)
    output = MeshRenderer(96).render_mesh(prior.mesh(params))
    torch.testing.assert_close(head.hint, torch.cat([output.normals, output.albedo, output.shaded], dim=1) * output.mask)
    inside = head.mask[0, 0] > 0
    assert head.hint[0, 6][inside].max() > 1.5  # red: albedo ~0.2..0.8 x shading ~2.3
    assert head.hint[0, 5][inside].min() < -0.05
    lengths = head.hint[0, :3].norm(dim=0)[inside]
    assert lengths.max() <= 1.0 + 1e-5 and lengths.min() < 0.999  # interpolated unit normals, not renormalised


def test_head_template_texture_coordinates_take_precedence(tmp_path):
    """DECA's renderer reads its UVs from head_template.obj; the npz's vt/ft are the fallback."""
    np.savez(
        tmp_path / "FLAME_texture.npz", mean=np.zeros((4, 4, 3)), tex_dir=np.zeros((4, 4, 3, 50)), vt=np.full((3, 2), 0.5), ft=np.array([[0, 1, 2]])
    )
    (tmp_path / "head_template.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0.1 0.2\nvt 0.3 0.4\nvt 0.5 0.6\nf 1/3 2/1 3/2\n")
    texture = load_flame_texture(tmp_path / "FLAME_texture.npz", head_template=tmp_path / "head_template.obj")
    np.testing.assert_allclose(texture.uvs, [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], atol=1e-7)
    np.testing.assert_array_equal(texture.uv_faces, [[2, 0, 1]])
    fallback = load_flame_texture(tmp_path / "FLAME_texture.npz")
    np.testing.assert_allclose(fallback.uvs, np.full((3, 2), 0.5))


def test_mesh_follows_rotation_and_camera(prior, tiny):
    params = HeadParams(
        shape=torch.zeros(1, 100),
        expression=torch.zeros(1, 50),
        jaw=torch.zeros(1, 3),
        rotation=torch.tensor([[30.0, -10.0, 5.0]]),
        camera=torch.tensor([[4.0, 0.1, -0.2]]),
        albedo=torch.zeros(1, 50),
        lighting=torch.zeros(1, 9, 3),
        backend="deca",
    )
    vertices = prior.mesh(params).vertices[0].double().numpy()
    # Independent: R = Rz(roll) Rx(pitch) Ry(yaw) via scipy's intrinsic "ZXY" sequence.
    rotation = Rotation.from_euler("ZXY", [5.0, -10.0, 30.0], degrees=True).as_matrix()
    root = tiny["J_regressor"].toarray()[0] @ tiny["v_template"]
    expected = 4.0 * ((tiny["v_template"] - root) @ rotation.T + root) + np.array([0.1, -0.2, 0.0])
    np.testing.assert_allclose(vertices, expected, atol=1e-5)


def test_mesh_refuses_other_backends(prior):
    params = HeadParams(
        shape=torch.zeros(1, 100),
        expression=torch.zeros(1, 50),
        jaw=torch.zeros(1, 3),
        rotation=torch.zeros(1, 3),
        camera=torch.ones(1, 3),
        albedo=torch.zeros(1, 50),
        lighting=torch.zeros(1, 9, 3),
        backend="builtin",
    )
    with pytest.raises(CapHumanError, match="builtin"):
        prior.mesh(params)
