"""Face models that need user-supplied weights, loaded from locally built files in the real format.

No published weights can be downloaded here, so each test writes a file with the same format
and key names as the published one (random values), loads it through the public loader and
checks the loader reproduces the in-memory model exactly, plus the errors a user would hit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from caphuman.errors import CapHumanError, MissingWeightsError
from caphuman.faces.arcface_onnx import ArcFaceOnnxRecognizer
from caphuman.faces.bisenet import BiSeNet, FaceParser
from caphuman.faces.facenet import FaceNetRecognizer, facenet_architecture

# Parameter count of facenet-pytorch's InceptionResnetV1(classify=True, num_classes=8631), the
# module the published 20180402-114759-vggface2.pt loads into: 23,482,624 for the embedding
# network plus 512 * 8631 + 8631 = 4,427,703 for the classifier (counted on facenet-pytorch 2.6.0
# before we built on its class; a change of the pinned package would show here).
PUBLISHED_FACENET_PARAMETERS = 27_910_327

# A few entry names (and shapes) of the published FaceNet file, read from facenet-pytorch's model.
PUBLISHED_FACENET_ENTRIES = {
    "conv2d_1a.conv.weight": (32, 3, 3, 3),
    "conv2d_1a.bn.running_mean": (32,),
    "repeat_1.0.branch0.conv.weight": (32, 256, 1, 1),
    "repeat_2.9.branch1.1.conv.weight": (128, 128, 1, 7),
    "mixed_6a.branch1.2.conv.weight": (256, 192, 3, 3),
    "mixed_7a.branch2.2.bn.running_var": (256,),
    "repeat_3.4.conv2d.bias": (1792,),
    "block8.conv2d.weight": (1792, 384, 1, 1),
    "last_linear.weight": (512, 1792),
    "last_bn.weight": (512,),
    "logits.weight": (8631, 512),
}

# Entry names of zllrunning's 79999_iter.pth (face-parsing.PyTorch, BiSeNet with ResNet-18).
PUBLISHED_BISENET_KEYS = [
    "cp.resnet.conv1.weight",
    "cp.resnet.bn1.running_mean",
    "cp.resnet.layer1.0.conv1.weight",
    "cp.resnet.layer2.0.downsample.0.weight",
    "cp.resnet.layer4.1.bn2.running_var",
    "cp.arm16.conv.conv.weight",
    "cp.arm16.conv_atten.weight",
    "cp.arm32.bn_atten.weight",
    "cp.conv_head32.conv.weight",
    "cp.conv_head16.bn.bias",
    "cp.conv_avg.conv.weight",
    "ffm.convblk.conv.weight",
    "ffm.conv1.weight",
    "ffm.conv2.weight",
    "conv_out.conv.conv.weight",
    "conv_out.conv_out.weight",
    "conv_out16.conv_out.weight",
    "conv_out32.conv.bn.weight",
]

# clibdev/face-parsing.PyTorch lists the original 79999_iter.pth as 50.8 MB (MiB): float32 tensors.
PUBLISHED_BISENET_FILE_MIB = 50.8


def _randomise_batch_norm_statistics(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics, so a loader that dropped them would change the output."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
            module.weight.data.copy_(1.0 + 0.1 * torch.randn(module.weight.shape, generator=generator))


def _random_crops(count: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


# ------------------------------------------------------------------------------------ FaceNet


def _prewhitened(crops: list[np.ndarray]) -> torch.Tensor:
    """facenet-pytorch's fixed_image_standardization, written independently of the loader."""
    return (torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() - 127.5) / 128.0


def published_format_facenet() -> nn.Module:
    """The module the published file was saved from: facenet-pytorch's model with the VGGFace2
    classifier (so the saved file has the ``logits.*`` entries the real one has)."""
    from facenet_pytorch import InceptionResnetV1

    return InceptionResnetV1(pretrained=None, classify=True, num_classes=8631)


@pytest.fixture(scope="module")
def facenet_file(tmp_path_factory) -> tuple[nn.Module, str]:
    """(embedding model with the file's weights, path of a file in the published format)."""
    torch.manual_seed(0)
    model = published_format_facenet()
    # Random init with arbitrary BN statistics makes a 100-layer net nearly input-independent,
    # which would hide preprocessing errors; calibrating the statistics on real-range inputs
    # (as training does) keeps embeddings sensitive to the image.
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics exactly
    with torch.no_grad():
        model.train()(_prewhitened(_random_crops(4, 160, seed=1)))
    model.eval()
    path = tmp_path_factory.mktemp("facenet") / "20180402-114759-vggface2.pt"
    torch.save(model.state_dict(), path)
    embedding_model = facenet_architecture()
    embedding_model.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("logits.")})
    return embedding_model, str(path)


def test_facenet_layout_matches_published_file(facenet_file):
    _, path = facenet_file
    state = torch.load(path, weights_only=True)
    for name, shape in PUBLISHED_FACENET_ENTRIES.items():
        assert tuple(state[name].shape) == shape, name
    assert sum(value.numel() for name, value in state.items() if "running" not in name and "num_batches" not in name) == PUBLISHED_FACENET_PARAMETERS


def test_facenet_loads_pt_and_matches_in_memory_model(facenet_file):
    model, path = facenet_file
    recognizer = FaceNetRecognizer.from_file(path, device="cpu")
    crops = _random_crops(2, 160, seed=2)

    embeddings = recognizer.embed(crops)

    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(_prewhitened(crops)), dim=1)
    assert embeddings.shape == (2, 512) and embeddings.dtype == torch.float32
    assert recognizer.embedding_dim == 512 and recognizer.crop == "facenet160"
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    # The embedding depends on the image, so the comparison above can see preprocessing errors.
    assert float(embeddings[0] @ embeddings[1]) < 0.99


def test_facenet_loads_without_logits_and_from_safetensors(facenet_file, tmp_path):
    from safetensors.torch import save_file

    model, _ = facenet_file
    path = tmp_path / "facenet.safetensors"
    save_file(dict(model.state_dict()), str(path))
    recognizer = FaceNetRecognizer.from_file(path)
    crops = _random_crops(1, 160, seed=3)
    reference = FaceNetRecognizer(model).embed(crops)
    torch.testing.assert_close(recognizer.embed(crops), reference, atol=1e-5, rtol=0)


def test_facenet_renamed_key_is_named_in_error(facenet_file, tmp_path):
    model, _ = facenet_file
    state = dict(model.state_dict())
    state["block8.conv2d.kernel"] = state.pop("block8.conv2d.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    with pytest.raises(CapHumanError) as raised:
        FaceNetRecognizer.from_file(path)
    assert "block8.conv2d.weight" in str(raised.value)
    assert "block8.conv2d.kernel" in str(raised.value)


def test_facenet_truncated_file_is_a_user_error(facenet_file, tmp_path):
    _, path = facenet_file
    truncated = tmp_path / "truncated.pt"
    with open(path, "rb") as source:
        truncated.write_bytes(source.read(1_000_000))
    with pytest.raises(CapHumanError, match="truncated.pt"):
        FaceNetRecognizer.from_file(truncated)


def test_facenet_missing_file(tmp_path):
    path = tmp_path / "checkpoints" / "20180402-114759-vggface2.pt"
    with pytest.raises(MissingWeightsError) as raised:
        FaceNetRecognizer.from_file(path)
    assert str(path) in str(raised.value) and "facenet-pytorch/releases" in str(raised.value)


# ------------------------------------------------------------------------------------ ArcFace


class TinyArcFace(nn.Module):
    """112x112x3 -> 512 stand-in with the interface of insightface's recognition models."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.PReLU(8),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.PReLU(16),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Linear(16 * 4 * 4, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _export_onnx(model: nn.Module, path, dynamic_batch: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 112, 112),),
            str(path),
            input_names=["input.1"],
            output_names=["embedding"],
            dynamic_axes={"input.1": {0: "None"}, "embedding": {0: "None"}} if dynamic_batch else None,
            dynamo=False,
        )


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_arcface_onnx_matches_torch_model(tmp_path, dynamic_batch):
    torch.manual_seed(0)
    model = TinyArcFace().eval()
    _randomise_batch_norm_statistics(model, seed=4)
    path = tmp_path / "w600k_r50.onnx"
    _export_onnx(model, path, dynamic_batch)

    recognizer = ArcFaceOnnxRecognizer.from_file(path, device="cpu")
    assert recognizer.embedding_dim == 512 and recognizer.crop == "arcface112"

    # Crops whose red and blue channels differ strongly, so feeding BGR would change the result.
    crops = _random_crops(3, 112, seed=5)
    crops[0][..., 0] = 255
    crops[0][..., 2] = 0
    embeddings = recognizer.embed(crops)

    # Independent preprocessing: insightface's blobFromImages(BGR, swapRB=True) = RGB,
    # (x - 127.5) / 127.5, NCHW.
    batch = (torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() - 127.5) / 127.5
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(batch), dim=1)
        swapped = torch.nn.functional.normalize(model(batch.flip(1)), dim=1)
    assert embeddings.shape == (3, 512)
    torch.testing.assert_close(embeddings, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    assert (embeddings[0] - swapped[0]).abs().max() > 1e-3  # the check above can see a swap


def test_arcface_detects_in_graph_normalisation(tmp_path):
    """An MXNet-style graph (first nodes named _minus*/_mul*) gets raw pixels, as in insightface."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(6)
    projection = rng.standard_normal((3 * 112 * 112, 128)).astype(np.float32) * 0.01
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["data", "mean"], ["centred"], name="_minus0"),
            helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="_mulscalar0"),
            helper.make_node("Flatten", ["scaled"], ["flat"], name="flatten0"),
            helper.make_node("MatMul", ["flat", "projection"], ["fc1"], name="fc1"),
        ],
        "mxnet_like",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 128])],
        initializer=[
            numpy_helper.from_array(np.array(127.5, dtype=np.float32), "mean"),
            numpy_helper.from_array(np.array(0.0078125, dtype=np.float32), "scale"),
            numpy_helper.from_array(projection, "projection"),
        ],
    )
    path = tmp_path / "mxnet_arcface.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))

    recognizer = ArcFaceOnnxRecognizer.from_file(path)
    crops = _random_crops(2, 112, seed=7)
    raw = np.stack(crops).astype(np.float32).transpose(0, 3, 1, 2)
    expected = ((raw - 127.5) * 0.0078125).reshape(2, -1) @ projection
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert recognizer.embedding_dim == 128
    np.testing.assert_allclose(recognizer.embed(crops).numpy(), expected, atol=1e-4)


def test_arcface_missing_and_broken_files(tmp_path):
    path = tmp_path / "antelopev2" / "glintr100.onnx"
    with pytest.raises(MissingWeightsError) as raised:
        ArcFaceOnnxRecognizer.from_file(path)
    assert str(path) in str(raised.value) and "insightface" in str(raised.value)

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(CapHumanError, match="broken.onnx"):
        ArcFaceOnnxRecognizer.from_file(broken)


# ------------------------------------------------------------------------------------ BiSeNet


def test_bisenet_loads_pth_and_parses(tmp_path):
    from skimage.data import astronaut

    torch.manual_seed(0)
    model = BiSeNet().eval()
    _randomise_batch_norm_statistics(model, seed=8)
    state = model.state_dict()
    assert set(PUBLISHED_BISENET_KEYS) <= set(state)
    assert tuple(state["conv_out.conv_out.weight"].shape) == (19, 256, 1, 1)
    float_bytes = 4 * sum(v.numel() for v in state.values() if v.is_floating_point())
    assert abs(float_bytes / 2**20 - PUBLISHED_BISENET_FILE_MIB) < 0.1

    path = tmp_path / "79999_iter.pth"
    torch.save(state, path)
    parser = FaceParser.from_file(path, device="cpu")

    image = astronaut()[:300, 50:450]  # (300, 400, 3): not square, not 512
    labels = parser.parse(image)
    assert labels.shape == (300, 400) and labels.dtype == np.uint8
    assert labels.max() < 19

    # Independent reference: resize 512 bilinear, ImageNet normalise, argmax, nearest back.
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((512, 512), Image.BILINEAR), dtype=np.float32) / 255
    normalised = (resized - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with torch.no_grad():
        logits = model(torch.from_numpy(normalised.transpose(2, 0, 1)).float()[None])
    expected = logits.argmax(1)[0].numpy().astype(np.uint8)
    rows = ((np.arange(300) + 0.5) * 512 / 300).astype(int)  # PIL nearest samples pixel centres
    cols = ((np.arange(400) + 0.5) * 512 / 400).astype(int)
    agreement = (labels == expected[rows][:, cols]).mean()
    assert agreement > 0.98, agreement  # nearest-resize rounding may differ on a few pixels


def test_bisenet_wrong_and_missing_files(tmp_path):
    path = tmp_path / "face-parsing" / "79999_iter.pth"
    with pytest.raises(MissingWeightsError) as raised:
        FaceParser.from_file(path)
    assert str(path) in str(raised.value)

    state = {k: v for k, v in BiSeNet().state_dict().items() if not k.startswith("conv_out16.")}
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    with pytest.raises(CapHumanError, match="conv_out16.conv.conv.weight"):
        FaceParser.from_file(partial)
