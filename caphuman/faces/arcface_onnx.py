"""ArcFace identity embeddings from insightface's ONNX recognition models.

Supported files are the recognition models of insightface's model packs, e.g.
``antelopev2/glintr100.onnx`` (IResNet-100, Glint360K) and ``buffalo_l/w600k_r50.onnx``
(IResNet-50, WebFace600K). Both take a (N, 3, 112, 112) float32 batch and return (N, 512).

Preprocessing, as insightface's ``ArcFaceONNX.get_feat`` does it:
- insightface works on OpenCV BGR images and builds the batch with
  ``cv2.dnn.blobFromImages(..., swapRB=True)``, so the network itself receives **RGB**.
  Our crops are already RGB (the package-wide convention), so they are fed without any channel
  swap; swapping here would feed BGR and silently degrade the embedding.
- pixels are mapped as (x - input_mean) / input_std with 127.5 / 127.5, i.e. to [-1, 1].
  Old MXNet-converted models carry that normalisation inside the graph; insightface detects
  them by ``Sub``/``_minus`` and ``Mul``/``_mul`` node names among the first 8 graph nodes
  and then uses mean 0, std 1. We apply the same rule (it needs the ``onnx`` package; without
  it we assume the modern 127.5 / 127.5 models and log a warning).
- crops are the 5-point-aligned 112x112 "arcface" template (``crop = "arcface112"``).
Embeddings are L2-normalised: ArcFace is trained and compared with cosine similarity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from caphuman.errors import CapHumanError
from caphuman.faces.recognizer import FaceRecognizer
from caphuman.weights.registry import missing_weights

logger = logging.getLogger(__name__)

_ARCFACE_DEFAULT_SIZE = 112


@dataclass(frozen=True)
class PixelNormalisation:
    """Per-pixel mapping applied before the network: (x - mean) / std, x in [0, 255]."""

    mean: float
    std: float


MODERN_ARCFACE_NORMALISATION = PixelNormalisation(mean=127.5, std=127.5)
IN_GRAPH_NORMALISATION = PixelNormalisation(mean=0.0, std=1.0)


def detect_pixel_normalisation(model_path: str | Path) -> PixelNormalisation:
    """insightface's rule: MXNet exports that subtract/multiply in-graph get raw pixels."""
    try:
        import onnx
    except ImportError:
        logger.warning(
            "The onnx package is not installed; assuming %s takes (x - 127.5) / 127.5 input.",
            model_path,
        )
        return MODERN_ARCFACE_NORMALISATION
    graph = onnx.load(str(model_path), load_external_data=False).graph
    first_names = [node.name for node in graph.node[:8]]
    has_sub = any(name.startswith(("Sub", "_minus")) for name in first_names)
    has_mul = any(name.startswith(("Mul", "_mul")) for name in first_names)
    return IN_GRAPH_NORMALISATION if has_sub and has_mul else MODERN_ARCFACE_NORMALISATION


def _onnx_providers(device: str | torch.device) -> list[str]:
    """CUDA when asked for and available in this onnxruntime build, CPU otherwise."""
    import onnxruntime

    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        logger.warning("onnxruntime has no CUDAExecutionProvider here; running ArcFace on the CPU.")
    return ["CPUExecutionProvider"]


class ArcFaceOnnxRecognizer(FaceRecognizer):
    """L2-normalised ArcFace embeddings (dimension read from the model) from 112 px RGB crops.

    Args:
        session: an ``onnxruntime.InferenceSession`` on the model.
        normalisation: the pixel mapping the model expects (see :func:`detect_pixel_normalisation`).
    """

    name = "arcface"
    crop = "arcface112"

    def __init__(self, session, normalisation: PixelNormalisation = MODERN_ARCFACE_NORMALISATION):
        self.session = session
        self.normalisation = normalisation
        model_input = session.get_inputs()[0]
        self.input_name: str = model_input.name
        self.output_name: str = session.get_outputs()[0].name
        batch_dim, _, height, width = model_input.shape
        # Some exports fix the batch to 1; those are run one crop at a time.
        self.fixed_batch_size: int | None = batch_dim if isinstance(batch_dim, int) else None
        self.input_size: tuple[int, int] = (
            height if isinstance(height, int) else _ARCFACE_DEFAULT_SIZE,
            width if isinstance(width, int) else _ARCFACE_DEFAULT_SIZE,
        )
        output_dim = session.get_outputs()[0].shape[-1]
        if not isinstance(output_dim, int):
            probe = np.zeros((1, 3, *self.input_size), dtype=np.float32)
            output_dim = int(self._run(probe).shape[-1])
        self.embedding_dim = int(output_dim)

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> ArcFaceOnnxRecognizer:
        """Open an insightface recognition ``.onnx`` (e.g. glintr100.onnx, w600k_r50.onnx).

        Raises:
            MissingWeightsError: no file at ``path``.
            CapHumanError: the file is not a loadable ONNX model.
        """
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise missing_weights("arcface", "ArcFace ONNX model", path)
        try:
            session = onnxruntime.InferenceSession(str(path), providers=_onnx_providers(device))
            normalisation = detect_pixel_normalisation(path)
        except Exception as error:  # onnxruntime raises its own exception types
            raise CapHumanError(f"Could not open the ArcFace ONNX model '{path}': {error}") from error
        logger.info("Loaded ArcFace ONNX model %s (input normalisation %s)", path, normalisation)
        return cls(session, normalisation)

    def preprocess(self, crops: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 (112, 112, 3) crops -> (N, 3, 112, 112) float32 in the model's input range."""
        height, width = self.input_size
        for index, crop in enumerate(crops):
            if crop.shape != (height, width, 3) or crop.dtype != np.uint8:
                raise ValueError(f"ArcFace crop {index} is {crop.shape} {crop.dtype}; expected ({height}, {width}, 3) uint8.")
        batch = np.stack(crops).astype(np.float32).transpose(0, 3, 1, 2)
        return np.ascontiguousarray((batch - self.normalisation.mean) / self.normalisation.std)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch_size == 1 and len(batch) != 1:
            return np.concatenate([self._run(batch[i : i + 1]) for i in range(len(batch))])
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def embed(self, crops: list[np.ndarray]) -> torch.Tensor:
        """(N, embedding_dim) float32 CPU tensor of unit-norm embeddings."""
        if not crops:
            return torch.zeros(0, self.embedding_dim)
        features = torch.from_numpy(self._run(self.preprocess(crops))).float()
        return F.normalize(features.reshape(len(crops), -1), dim=1)
