"""FaceNet (Inception-ResNet-v1, VGGFace2) identity embeddings, the recogniser CapHuman released.

The published CapHuman code embeds the reference face with facenet-pytorch's
``InceptionResnetV1(pretrained="vggface2")``: David Sandberg's TensorFlow FaceNet model
``20180402-114759`` (trained on VGGFace2, 8631 identities), converted to a PyTorch state dict
and published as ``20180402-114759-vggface2.pt``. This file writes the same architecture so
that that file loads here unchanged: every parameter/buffer name and shape below is the one
the published state dict uses (``conv2d_1a.conv.weight``, ``repeat_1.0.branch0.conv.weight``,
``mixed_6a.branch1.2.bn.running_var``, ``block8.conv2d.bias``, ``last_linear.weight``,
``last_bn.running_mean``, ``logits.weight`` ...).

Architecture facts (Szegedy et al. 2016, Inception-ResNet-v1, as trained by FaceNet):
- every convolution is bias-free, followed by BatchNorm (eps 1e-3, the TensorFlow value) and
  ReLU, except the residual "up" 1x1 convs (``conv2d``) which have a bias and no BN;
- stem 160 -> 79 -> 77 -> 77 -> 38 -> 38 -> 36 -> 17 px (256 channels);
- 5 x Inception-ResNet-A (scale 0.17), Reduction-A (-> 896 ch, 8 px),
  10 x Inception-ResNet-B (scale 0.10), Reduction-B (-> 1792 ch, 3 px),
  5 x Inception-ResNet-C (scale 0.20) + one final C block without ReLU (scale 1.0);
- global average pool, Linear(1792 -> 512, no bias), BatchNorm1d(512, eps 1e-3);
- optional classifier ``logits`` Linear(512 -> 8631) for the VGGFace2 identities, not needed
  for embeddings and therefore optional when loading.

Input: RGB, 160x160 face crop (facenet-pytorch's MTCNN crop), "prewhitened" as
(x - 127.5) / 128 (facenet-pytorch's ``fixed_image_standardization``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from caphuman.errors import CapHumanError, MissingWeightsError
from caphuman.faces.recognizer import FaceRecognizer

logger = logging.getLogger(__name__)

FACENET_WEIGHTS_SOURCE = (
    "https://github.com/timesler/facenet-pytorch/releases (20180402-114759-vggface2.pt)"
)
VGGFACE2_NUM_IDENTITIES = 8631
FACENET_EMBEDDING_DIM = 512
FACENET_INPUT_SIZE = 160

# TensorFlow's BatchNorm epsilon, which the converted weights were trained with.
_TF_BN_EPS = 1e-3


# --------------------------------------------------------------------------------------------
# Reading state-dict files (shared with the BiSeNet face parser).
# --------------------------------------------------------------------------------------------


def read_state_dict_file(path: str | Path, what: str, source: str) -> dict[str, torch.Tensor]:
    """Read a plain state dict from a ``.pt``/``.pth``/``.ckpt`` or ``.safetensors`` file.

    Torch files are read with ``weights_only=True`` (no arbitrary pickles) onto the CPU. A
    DataParallel ``module.`` prefix and a ``{"state_dict": ...}`` wrapper are removed, as both
    are common ways the same weights get re-saved.

    Raises:
        MissingWeightsError: the file does not exist.
        CapHumanError: the file cannot be read or does not hold a mapping of name -> tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(what=what, path=str(path), source=source)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: object = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch/zip/pickle/safetensors each raise their own types
        reason = str(error).split(". ")[0].strip().rstrip(".")  # libraries append long advice
        raise CapHumanError(
            f"Could not read {what} from '{path}' (damaged or not a weights file: {reason})."
        ) from error

    if isinstance(loaded, Mapping) and set(loaded) == {"state_dict"}:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise CapHumanError(f"'{path}' does not hold a state dict of tensors for {what}.")

    state_dict = dict(loaded)
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


def load_matching_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, path: str | Path
) -> None:
    """Load ``state_dict`` into ``model`` after checking names and shapes match exactly.

    BatchNorm ``num_batches_tracked`` counters are allowed to be absent (older PyTorch saves
    and TensorFlow conversions lack them; they do not affect inference).

    Raises:
        CapHumanError: naming up to five missing, unexpected or mis-shaped entries.
    """
    expected = model.state_dict()
    missing = sorted(
        key
        for key in expected
        if key not in state_dict and not key.endswith("num_batches_tracked")
    )
    unexpected = sorted(key for key in state_dict if key not in expected)
    mis_shaped = sorted(
        f"{key} {tuple(state_dict[key].shape)} != {tuple(expected[key].shape)}"
        for key in state_dict
        if key in expected and state_dict[key].shape != expected[key].shape
    )
    problems = []
    for label, entries in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
        if entries:
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            problems.append(f"{len(entries)} {label} ({shown})")
    if problems:
        raise CapHumanError(
            f"'{path}' does not match the {what} layout: " + "; ".join(problems) + "."
        )
    model.load_state_dict(dict(state_dict), strict=False)


# --------------------------------------------------------------------------------------------
# Architecture.
# --------------------------------------------------------------------------------------------


class ConvBnRelu(nn.Module):
    """Bias-free conv -> BatchNorm(eps 1e-3) -> ReLU; state keys ``conv.*`` and ``bn.*``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=_TF_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionResnetA(nn.Module):
    """Inception-ResNet-A on 256 channels (35x35 in the paper's 299 px setting, 17x17 here).

    Branches: 1x1(32) | 1x1(32)-3x3(32) | 1x1(32)-3x3(32)-3x3(32); concat (96) -> 1x1 conv
    with bias back to 256, scaled and added to the input.
    """

    def __init__(self, residual_scale: float):
        super().__init__()
        self.residual_scale = residual_scale
        self.branch0 = ConvBnRelu(256, 32, 1)
        self.branch1 = nn.Sequential(ConvBnRelu(256, 32, 1), ConvBnRelu(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(
            ConvBnRelu(256, 32, 1), ConvBnRelu(32, 32, 3, padding=1), ConvBnRelu(32, 32, 3, padding=1)
        )
        self.conv2d = nn.Conv2d(96, 256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)
        return F.relu(x + self.residual_scale * self.conv2d(mixed))


class InceptionResnetB(nn.Module):
    """Inception-ResNet-B on 896 channels: 1x1(128) | 1x1(128)-1x7(128)-7x1(128) -> 1x1 to 896."""

    def __init__(self, residual_scale: float):
        super().__init__()
        self.residual_scale = residual_scale
        self.branch0 = ConvBnRelu(896, 128, 1)
        self.branch1 = nn.Sequential(
            ConvBnRelu(896, 128, 1),
            ConvBnRelu(128, 128, (1, 7), padding=(0, 3)),
            ConvBnRelu(128, 128, (7, 1), padding=(3, 0)),
        )
        self.conv2d = nn.Conv2d(256, 896, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.branch0(x), self.branch1(x)], dim=1)
        return F.relu(x + self.residual_scale * self.conv2d(mixed))


class InceptionResnetC(nn.Module):
    """Inception-ResNet-C on 1792 channels: 1x1(192) | 1x1(192)-1x3(192)-3x1(192) -> 1x1 to 1792.

    The network's very last C block skips the final ReLU (``apply_relu=False``), as in FaceNet.
    """

    def __init__(self, residual_scale: float, apply_relu: bool = True):
        super().__init__()
        self.residual_scale = residual_scale
        self.apply_relu = apply_relu
        self.branch0 = ConvBnRelu(1792, 192, 1)
        self.branch1 = nn.Sequential(
            ConvBnRelu(1792, 192, 1),
            ConvBnRelu(192, 192, (1, 3), padding=(0, 1)),
            ConvBnRelu(192, 192, (3, 1), padding=(1, 0)),
        )
        self.conv2d = nn.Conv2d(384, 1792, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.branch0(x), self.branch1(x)], dim=1)
        out = x + self.residual_scale * self.conv2d(mixed)
        return F.relu(out) if self.apply_relu else out


class ReductionA(nn.Module):
    """Reduction-A (``mixed_6a``): 256 -> 384 + 256 + 256 (max-pool) = 896 channels, stride 2."""

    def __init__(self):
        super().__init__()
        self.branch0 = ConvBnRelu(256, 384, 3, stride=2)
        self.branch1 = nn.Sequential(
            ConvBnRelu(256, 192, 1), ConvBnRelu(192, 192, 3, padding=1), ConvBnRelu(192, 256, 3, stride=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch0(x), self.branch1(x), pooled], dim=1)


class ReductionB(nn.Module):
    """Reduction-B (``mixed_7a``): 896 -> 384 + 256 + 256 + 896 (max-pool) = 1792 channels."""

    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(ConvBnRelu(896, 256, 1), ConvBnRelu(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(ConvBnRelu(896, 256, 1), ConvBnRelu(256, 256, 3, stride=2))
        self.branch2 = nn.Sequential(
            ConvBnRelu(896, 256, 1), ConvBnRelu(256, 256, 3, padding=1), ConvBnRelu(256, 256, 3, stride=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), pooled], dim=1)


class InceptionResnetV1(nn.Module):
    """FaceNet's Inception-ResNet-v1 with the state-dict layout of ``20180402-114759-vggface2.pt``.

    Args:
        num_classes: size of the optional identity classifier ``logits`` (8631 for VGGFace2);
            ``None`` builds the embedding network only.
    """

    def __init__(self, num_classes: int | None = VGGFACE2_NUM_IDENTITIES):
        super().__init__()
        # Stem (sizes for a 160 px input).
        self.conv2d_1a = ConvBnRelu(3, 32, 3, stride=2)  # 79
        self.conv2d_2a = ConvBnRelu(32, 32, 3)  # 77
        self.conv2d_2b = ConvBnRelu(32, 64, 3, padding=1)  # 77
        self.conv2d_3b = ConvBnRelu(64, 80, 1)  # 38 after the max-pool
        self.conv2d_4a = ConvBnRelu(80, 192, 3)  # 36
        self.conv2d_4b = ConvBnRelu(192, 256, 3, stride=2)  # 17
        self.repeat_1 = nn.Sequential(*[InceptionResnetA(0.17) for _ in range(5)])
        self.mixed_6a = ReductionA()  # 8
        self.repeat_2 = nn.Sequential(*[InceptionResnetB(0.10) for _ in range(10)])
        self.mixed_7a = ReductionB()  # 3
        self.repeat_3 = nn.Sequential(*[InceptionResnetC(0.20) for _ in range(5)])
        self.block8 = InceptionResnetC(1.0, apply_relu=False)
        self.last_linear = nn.Linear(1792, FACENET_EMBEDDING_DIM, bias=False)
        self.last_bn = nn.BatchNorm1d(FACENET_EMBEDDING_DIM, eps=_TF_BN_EPS)
        self.logits = (
            nn.Linear(FACENET_EMBEDDING_DIM, num_classes) if num_classes is not None else None
        )

    def forward(self, prewhitened: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings.

        Args:
            prewhitened: (N, 3, H, W) float RGB in about [-1, 1], i.e. (pixel - 127.5) / 128;
                H = W = 160 for the published model (any size >= 75 px runs).
        Returns:
            (N, 512) float embeddings before L2 normalisation (the ``last_bn`` output).
        """
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(prewhitened)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(x)))
        x = self.mixed_6a(self.repeat_1(x))
        x = self.mixed_7a(self.repeat_2(x))
        x = self.block8(self.repeat_3(x))
        # Dropout sits here in training; it is the identity at inference and holds no weights.
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.last_bn(self.last_linear(pooled))

    def classify(self, prewhitened: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) VGGFace2 identity logits; needs the ``logits`` layer."""
        if self.logits is None:
            raise RuntimeError("This InceptionResnetV1 was built without the logits layer.")
        return self.logits(self.forward(prewhitened))


def prewhiten(crops: Sequence[np.ndarray], size: int = FACENET_INPUT_SIZE) -> torch.Tensor:
    """RGB uint8 crops (size, size, 3) -> (N, 3, size, size) float32, (x - 127.5) / 128."""
    for index, crop in enumerate(crops):
        if crop.shape != (size, size, 3) or crop.dtype != np.uint8:
            raise ValueError(
                f"FaceNet crop {index} is {crop.shape} {crop.dtype}; expected ({size}, {size}, 3) uint8."
            )
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
    return (batch - 127.5) / 128.0


class FaceNetRecognizer(FaceRecognizer):
    """512-d L2-normalised FaceNet (VGGFace2) embeddings from 160 px RGB crops."""

    name = "facenet"
    embedding_dim = FACENET_EMBEDDING_DIM
    crop = "facenet160"

    def __init__(self, model: InceptionResnetV1, device: str | torch.device = "cpu", batch_size: int = 32):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> FaceNetRecognizer:
        """Load ``20180402-114759-vggface2.pt`` (or the same tensors as ``.safetensors``).

        The ``logits`` classifier is kept when present and not required otherwise.

        Raises:
            MissingWeightsError: no file at ``path``.
            CapHumanError: the file is unreadable or its names/shapes are not FaceNet's.
        """
        what = "FaceNet VGGFace2 weights"
        state_dict = read_state_dict_file(path, what=what, source=FACENET_WEIGHTS_SOURCE)
        logits_weight = state_dict.get("logits.weight")
        num_classes = int(logits_weight.shape[0]) if logits_weight is not None else None
        model = InceptionResnetV1(num_classes=num_classes)
        load_matching_state_dict(model, state_dict, what=what, path=path)
        logger.info("Loaded FaceNet weights from %s (classifier: %s)", path, num_classes)
        return cls(model, device=device)

    @torch.inference_mode()
    def embed(self, crops: list[np.ndarray]) -> torch.Tensor:
        """(N, 512) float32 CPU tensor of unit-norm embeddings for RGB uint8 160x160 crops."""
        if not crops:
            return torch.zeros(0, self.embedding_dim)
        chunks = []
        for start in range(0, len(crops), self.batch_size):
            batch = prewhiten(crops[start : start + self.batch_size]).to(self.device)
            chunks.append(F.normalize(self.model(batch).float(), dim=1).cpu())
        return torch.cat(chunks)
