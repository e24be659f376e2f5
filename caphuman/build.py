"""Build a ready CapHuman pipeline, and the face and head models, from a config.

The tiny backbone is built locally; the SD 1.5 backbone and every face model load from files
under the weights directory, where checkpoints/manifest.yaml (:mod:`caphuman.weights.registry`)
puts them (see checkpoints/README.md).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers.models.modeling_utils import ModelMixin

from caphuman.acceleration import apply_speed_options
from caphuman.config import CapHumanConfig
from caphuman.errors import CapHumanError, MissingWeightsError
from caphuman.faces.arcface_onnx import ArcFaceOnnxRecognizer
from caphuman.faces.bisenet import FaceParser
from caphuman.faces.dlib_recognizer import DlibRecognizer
from caphuman.faces.facenet import FaceNetRecognizer
from caphuman.faces.recognizer import FaceRecognizer
from caphuman.faces.tiny_recognizer import TinyFaceRecognizer
from caphuman.head.builtin.builtin_prior import BuiltinHeadPrior
from caphuman.head.deca.deca_prior import DecaHeadPrior
from caphuman.models.adapter import CapHumanAdapter
from caphuman.models.backbone import Backbone
from caphuman.models.body_controlnet import load_body_controlnet
from caphuman.models.tiny import tiny_backbone
from caphuman.pipeline import CapHumanPipeline
from caphuman.schedulers import make_scheduler
from caphuman.weights.registry import default_location, weights_entry, weights_path
from caphuman.weights.stable_diffusion import load_sd15_backbone

logger = logging.getLogger(__name__)


def resolve_device(device: str | None) -> torch.device:
    """ "auto"/None -> CUDA when available, else CPU; anything else as torch understands it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise CapHumanError(f"Unknown device '{device}'; use cpu, cuda, cuda:N or auto.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CapHumanError(f"Device '{device}' was asked for but this machine has no CUDA GPU; use --device cpu.")
    return resolved


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto" -> float16 on CUDA (as the model was trained), float32 on CPU (fp16 is slow there)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_backbone(config: CapHumanConfig, weights_dir: str | Path) -> Backbone:
    if config.model.backbone == "tiny":
        return tiny_backbone(config.model.tiny)

    return load_sd15_backbone(config.model, weights_dir)


def load_face_recognizer(config: CapHumanConfig, weights_dir: str | Path, device: torch.device) -> FaceRecognizer:
    name = config.model.face_recognizer
    if name == "tiny":
        return TinyFaceRecognizer(config.model.face_embedding_dim, seed=config.model.tiny.init_seed)
    if name == "dlib":
        return DlibRecognizer()
    if name == "facenet":
        return FaceNetRecognizer.from_file(default_location("facenet", weights_dir), device=device)

    return ArcFaceOnnxRecognizer.from_file(default_location("arcface", weights_dir), device=device)


def load_face_parser(weights_dir: str | Path, device: torch.device | str):
    """BiSeNet from ``weights_dir`` when its file is there; None otherwise (callers then use the
    face-mesh oval as the face region)."""
    path = default_location("face_parsing", weights_dir)
    if not path.is_file():
        return None

    return FaceParser.from_file(path, device=device)


def load_head_prior(name: str, weights_dir: str | Path, detector, device: torch.device | str):
    """The head prior ``name`` ("deca" or "builtin"), sharing ``detector`` (a FaceDetector)."""
    if name == "deca":
        return DecaHeadPrior(weights_dir, device=device, detector=detector)

    return BuiltinHeadPrior(detector=detector)


def load_adapter(config: CapHumanConfig, backbone: Backbone, weights_dir: str | Path) -> CapHumanAdapter:
    clip_dim = backbone.image_encoder.config.hidden_size
    if config.model.caphuman is None:
        logger.info("No CapHuman weights configured: CapFace starts fresh from the UNet (zero convolutions).")
        adapter = CapHumanAdapter.from_unet(backbone.unet, config.model.face_embedding_dim, clip_dim, seed=config.model.tiny.init_seed)
    else:
        path = weights_path(weights_dir, config.model.caphuman)
        if not path.exists():
            # The command that makes it, with this very path (the manifest's source names the default one).
            original = weights_entry("caphuman_original").path
            raise MissingWeightsError("CapHuman weights", str(path), f"`caphuman convert --from {original} --out {path}` (see checkpoints/README.md)")
        adapter = CapHumanAdapter.from_pretrained(path)
    adapter.check_compatible(backbone.unet, clip_dim, config.model.face_embedding_dim)
    return adapter


def load_body_controlnet_for(config: CapHumanConfig, backbone: Backbone, weights_dir: str | Path):
    """The OpenPose ControlNet when the config uses it (a path and a strength > 0), else None, so
    the default run never reads the 1.4 GB file."""
    if config.model.body_controlnet is None or config.sampling.body_control_strength == 0:
        return None

    return load_body_controlnet(weights_path(weights_dir, config.model.body_controlnet), unet_config=backbone.unet.config)


def build_pipeline(
    config: CapHumanConfig,
    weights_dir: str | Path = "checkpoints",
    device: str | None = "auto",
    with_recognizer: bool = True,
    face_recognizer: FaceRecognizer | None = None,
) -> CapHumanPipeline:
    """Assemble a pipeline on ``device`` in the config's dtype; missing files name themselves.

    ``face_recognizer`` reuses an already loaded recogniser (e.g. a CapHumanSession's)."""
    torch_device = resolve_device(device)
    dtype = resolve_dtype(config.sampling.dtype, torch_device)
    backbone = load_backbone(config, weights_dir)
    adapter = load_adapter(config, backbone, weights_dir)
    recognizer = face_recognizer
    if recognizer is None and with_recognizer:
        recognizer = load_face_recognizer(config, weights_dir, torch_device)
    body_controlnet = load_body_controlnet_for(config, backbone, weights_dir)
    pipe = CapHumanPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=backbone.unet,
        capface=adapter.capface.eval(),
        identity_encoder=adapter.identity_encoder.eval(),
        image_encoder=backbone.image_encoder,
        feature_extractor=backbone.feature_extractor,
        scheduler=make_scheduler(config.sampling.scheduler, backbone.scheduler_config),
        face_recognizer=recognizer,
        body_controlnet=body_controlnet,
    )
    pipe = pipe.to(torch_device)
    if dtype != torch.float32:  # casting float32 -> float32 would only make diffusers warn
        pipe = pipe.to(dtype=dtype)
    if config.sampling.attention == "xformers":
        enable_xformers([pipe.unet, pipe.capface, pipe.vae] + ([pipe.body_controlnet] if pipe.body_controlnet is not None else []), torch_device)
    apply_speed_options(pipe, compile=config.sampling.compile, channels_last=config.sampling.channels_last)
    return pipe


def enable_xformers(modules: Iterable[ModelMixin], device: torch.device) -> bool:
    """xformers attention for ``modules`` on CUDA when installed; otherwise say why and keep
    PyTorch SDPA. Returns whether xformers is now on."""
    if device.type != "cuda":
        logger.warning("xformers attention needs CUDA; using PyTorch SDPA on %s.", device)
        return False
    if importlib.util.find_spec("xformers") is None:
        logger.warning("xformers is not installed (pip install -e '.[cuda]'); using PyTorch SDPA.")
        return False
    for module in modules:
        module.enable_xformers_memory_efficient_attention()
    return True
