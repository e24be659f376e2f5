"""FaceNet (Inception-ResNet-v1, VGGFace2) identity embeddings, the recogniser CapHuman released.

The published CapHuman code embeds the reference face with facenet-pytorch's
``InceptionResnetV1(pretrained="vggface2")``: David Sandberg's TensorFlow FaceNet model
``20180402-114759`` (trained on VGGFace2, 8631 identities), converted to a PyTorch state dict
and published as ``20180402-114759-vggface2.pt``. We build that same class from facenet-pytorch
(the official code's own dependency, pinned to its 2.5.3) WITHOUT ``pretrained`` (which would
download), and load the user's file through :func:`read_state_dict_file` (``weights_only=True``)
with every name and shape checked (``conv2d_1a.conv.weight``, ``repeat_1.0.branch0.conv.weight``,
``mixed_6a.branch1.2.bn.running_var``, ``block8.conv2d.bias``, ``last_linear.weight``,
``last_bn.running_mean`` ...). The file's VGGFace2 classifier ``logits.*`` is not needed for
embeddings and is dropped; a file without it loads too.

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


def facenet_architecture() -> nn.Module:
    """facenet-pytorch's InceptionResnetV1 embedding network, random weights (nothing downloaded).

    Its forward takes (N, 3, 160, 160) prewhitened RGB and returns (N, 512) L2-normalised
    embeddings (the ``last_bn`` output, normalised).
    """
    from facenet_pytorch import InceptionResnetV1

    return InceptionResnetV1(pretrained=None, classify=False).eval()


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

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", batch_size: int = 32):
        """``model``: an embedding network, e.g. :func:`facenet_architecture` with weights loaded."""
        if getattr(model, "classify", False):
            raise ValueError("FaceNetRecognizer needs InceptionResnetV1(classify=False): a classifier returns logits, not embeddings.")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> FaceNetRecognizer:
        """Load ``20180402-114759-vggface2.pt`` (or the same tensors as ``.safetensors``).

        The ``logits`` classifier is dropped when present (embeddings do not use it).

        Raises:
            MissingWeightsError: no file at ``path``.
            CapHumanError: the file is unreadable or its names/shapes are not FaceNet's.
        """
        what = "FaceNet VGGFace2 weights"
        state_dict = read_state_dict_file(path, what=what, source=FACENET_WEIGHTS_SOURCE)
        embedding_state = {key: value for key, value in state_dict.items() if not key.startswith("logits.")}
        model = facenet_architecture()
        load_matching_state_dict(model, embedding_state, what=what, path=path)
        logger.info("Loaded FaceNet weights from %s", path)
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
