"""Typed configuration: dataclasses validated in ``__post_init__``, read from omegaconf YAML.

A YAML file only needs the keys it changes; every other value keeps the default written here.
An unknown key, a wrong type or an out-of-range value raises :class:`caphuman.errors.ConfigError`
whose message names the key (a key of :data:`REMOVED_SETTINGS` is ignored with a warning). The resolved config is saved next to every output
(:func:`save_config`), so each result can be re-run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from caphuman._resources import shipped_root

# The checks live in caphuman.checks (shared with the command-line flags); re-exported here.
from caphuman.checks import check_choice, check_finite, check_positive, check_range, check_seed
from caphuman.errors import ConfigError
from caphuman.outputs import write_text_atomically
from caphuman.schedulers import SCHEDULERS
from caphuman.weights.registry import weights_entry

logger = logging.getLogger(__name__)

# The one list of each choice a user can name: the dataclasses below check against these, and the
# command-line flags offer them (choices=...). Scheduler names live with the schedulers
# (caphuman.schedulers.SCHEDULERS).
BACKBONES = ("sd15", "tiny")
FACE_RECOGNIZERS = ("facenet", "arcface", "dlib", "tiny")
HEAD_PRIORS = ("deca", "builtin")
REFERENCE_FUSIONS = ("mean", "concat")
ATTENTION_BACKENDS = ("sdpa", "xformers")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# Layers of the OpenPose map (sampling.body_modes), and those drawn when none are named.
BODY_MODES = ("face", "body", "hand")
DEFAULT_BODY_MODES = ("face", "body")
CLIP_CROPS = ("official", "aligned")
FACE_PARSERS = ("bisenet", "mesh", "auto")
FACENET_CROPS = ("mtcnn", "mesh")
PHOTO_FITS = ("squash", "pad")
# The recogniser that scores identity similarity in `caphuman eval --id-model` (not a config key;
# see caphuman.eval.identity_similarity): "auto" takes the first whose weights are present.
IDENTITY_MODELS = ("auto", "facenet", "arcface", "dlib")

# Keys that were settings once but never changed anything; a file that still has one (a config
# saved next to an earlier output, an exported adapter's sample_config.yaml) loads with a warning.
REMOVED_SETTINGS = {
    "model.clip_embedding_dim": "the width is read from the loaded CLIP image encoder",
    "model.cross_attention_dim": "the width is read from the loaded UNet",
}


@dataclass
class TinyModelConfig:
    """Sizes of the tiny, randomly initialised backbone used in tests and CPU smoke runs."""

    block_out_channels: tuple[int, ...] = (8, 16)
    layers_per_block: int = 1
    cross_attention_dim: int = 32
    attention_head_dim: int = 2
    norm_num_groups: int = 4
    text_hidden_size: int = 32
    vision_hidden_size: int = 32
    vision_image_size: int = 32
    vision_patch_size: int = 8
    # Tiny components are initialised from this seed, so two builds are identical.
    init_seed: int = 0

    def __post_init__(self) -> None:
        if len(self.block_out_channels) < 1:
            raise ConfigError("model.tiny.block_out_channels must list at least one width.")
        for name in (
            "layers_per_block",
            "cross_attention_dim",
            "attention_head_dim",
            "norm_num_groups",
            "text_hidden_size",
            "vision_hidden_size",
            "vision_image_size",
            "vision_patch_size",
        ):
            check_positive(f"model.tiny.{name}", getattr(self, name))
        check_seed("model.tiny.init_seed", self.init_seed)
        for width in self.block_out_channels:
            check_positive("model.tiny.block_out_channels", width)
            if width % self.norm_num_groups:
                raise ConfigError(
                    f"model.tiny.block_out_channels {tuple(self.block_out_channels)} must be multiples of norm_num_groups {self.norm_num_groups}."
                )


@dataclass
class ModelConfig:
    """Which components make up the model, and where their weights are.

    File paths are relative to the weights directory (``--weights``, default ``checkpoints/``)
    unless absolute; their defaults are the manifest's paths (checkpoints/manifest.yaml, the
    entries whose config_key names the field). See checkpoints/README.md for every file.
    """

    backbone: str = "sd15"
    # SD 1.5 (or a fine-tune): a diffusers folder or a single .safetensors/.ckpt file.
    stable_diffusion: str = field(default_factory=lambda: weights_entry("stable_diffusion").path)
    # Optional separate VAE (single file or diffusers folder); null keeps the checkpoint's own.
    vae: str | None = field(default_factory=lambda: weights_entry("vae").path)
    # CLIP ViT-L/14 vision tower (a transformers folder) for the local identity features.
    clip_vision: str = field(default_factory=lambda: weights_entry("clip_vision").path)
    # Trained CapHuman parts (CapFace + projections) as written by `caphuman convert` or training;
    # null starts CapFace fresh from the UNet (zero convolutions: the model then equals SD).
    caphuman: str | None = field(default_factory=lambda: weights_entry("caphuman").path)
    # The official second ControlNet (OpenPose, control_v11p_sd15_openpose.pth or a diffusers
    # folder); null: none. Used only when sampling.body_control_strength > 0.
    body_controlnet: str | None = None
    face_recognizer: str = "facenet"
    # Width of the global identity embedding: 512 for FaceNet/ArcFace, 128 for dlib.
    face_embedding_dim: int = 512
    # How several reference photos combine: "mean" averages the projected tokens (keeps the
    # 258 tokens the published model saw); "concat" keeps every photo's local tokens.
    reference_fusion: str = "mean"
    head_prior: str = "deca"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)

    def __post_init__(self) -> None:
        check_choice("model.backbone", self.backbone, BACKBONES)
        check_choice("model.face_recognizer", self.face_recognizer, FACE_RECOGNIZERS)
        check_choice("model.head_prior", self.head_prior, HEAD_PRIORS)
        check_choice("model.reference_fusion", self.reference_fusion, REFERENCE_FUSIONS)
        check_positive("model.face_embedding_dim", self.face_embedding_dim)
        expected = {"dlib": 128, "facenet": 512, "arcface": 512}.get(self.face_recognizer)
        if expected is not None and self.face_embedding_dim != expected:
            raise ConfigError(
                f"model.face_embedding_dim is {self.face_embedding_dim} but the '{self.face_recognizer}' recogniser gives {expected}-d embeddings."
            )


@dataclass
class SamplingConfig:
    """Sampling settings; the defaults are the published ones (DDIM 20 steps, eta 0, guidance 7)."""

    scheduler: str = "ddim"
    num_inference_steps: int = 20
    guidance_scale: float = 7.0
    # Extra guidance on the identity tokens (3 branches per step). null: off, as published.
    identity_guidance_scale: float | None = None
    capface_strength: float = 1.0
    mask_gating: bool = True
    # Identity tokens are zeroed while the timestep is above tau (0 disables this).
    tau: int = 0
    eta: float = 0.0
    height: int = 512
    width: int = 512
    num_images: int = 1
    seed: int = 12345
    negative_prompt: str = ""
    dtype: str = "auto"
    attention: str = "sdpa"
    # Scale of the OpenPose ControlNet's residuals (official default 0: off) and the layers of
    # its map (face dots, body, hands), as the official --controlnet_strength / --controlnet_mode.
    body_control_strength: float = 0.0
    body_modes: str = ",".join(DEFAULT_BODY_MODES)
    # Speed (see caphuman/acceleration.py): torch.compile the UNet and CapFace (the first call per
    # image size and batch compiles, minutes on SD 1.5); channels_last memory for the convolutions.
    compile: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        check_choice("sampling.scheduler", self.scheduler, tuple(SCHEDULERS))
        check_choice("sampling.dtype", self.dtype, DTYPES)
        check_choice("sampling.attention", self.attention, ATTENTION_BACKENDS)
        check_positive("sampling.num_inference_steps", self.num_inference_steps)
        check_positive("sampling.guidance_scale", self.guidance_scale, allow_zero=True)
        check_positive("sampling.capface_strength", self.capface_strength, allow_zero=True)
        check_positive("sampling.num_images", self.num_images)
        # DDIM's eta interpolates between deterministic (0) and DDPM-like (1) sampling.
        check_range("sampling.eta", self.eta, 0.0, 1.0)
        check_seed("sampling.seed", self.seed)
        check_positive("sampling.body_control_strength", self.body_control_strength, allow_zero=True)
        body_modes = [m.strip() for m in self.body_modes.split(",") if m.strip()]
        if not body_modes or any(m not in BODY_MODES for m in body_modes):
            raise ConfigError(f"sampling.body_modes must be a comma list of {', '.join(BODY_MODES)}, got '{self.body_modes}'.")
        if self.identity_guidance_scale is not None:
            check_positive("sampling.identity_guidance_scale", self.identity_guidance_scale, allow_zero=True)
        check_range("sampling.tau", self.tau, 0, 1000)
        for name in ("height", "width"):
            value = getattr(self, name)
            check_finite(f"sampling.{name}", value)
            if value <= 0 or value % 8:
                raise ConfigError(f"sampling.{name} must be a positive multiple of 8, got {value}.")

    def pipeline_kwargs(self, reference_fusion: str = "mean") -> dict[str, Any]:
        """These settings as CapHumanPipeline keyword arguments: the one place the config's names
        become the pipeline's. Not included: the image size (the hint sets it), the seed (callers
        make the generator on their device), and what is fixed when the pipeline is built
        (scheduler, dtype, attention, compile, channels_last); ``body_modes`` shapes the pose map.
        ``reference_fusion`` is the model's (``model.reference_fusion``)."""
        return {
            "negative_prompt": self.negative_prompt,
            "num_images_per_prompt": self.num_images,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "identity_guidance_scale": self.identity_guidance_scale,
            "capface_strength": self.capface_strength,
            "mask_gating": self.mask_gating,
            "tau": self.tau,
            "eta": self.eta,
            "reference_fusion": reference_fusion,
            "body_control_strength": self.body_control_strength,
        }


@dataclass
class IdentityConfig:
    """How a reference photo becomes the identity models' inputs (defaults: the published script).

    clip_crop: "official" = the whole photo, parsed at its native size, non-face painted white,
        then CLIP's shortest-side-224 resize and centre crop (what the released inference does);
        "aligned" = an eye/mouth-aligned 224 px face crop, non-face white (the framing of the
        pre-aligned photos the released model was trained on).
    face_parser: the non-face classes come from "bisenet" (79999_iter.pth, as released; a
        missing file is an error), "mesh" (mediapipe's face oval, offline) or "auto" (BiSeNet
        when its file is present, else the mesh oval).
    facenet_crop: FaceNet's 160 px input from "mtcnn" (facenet-pytorch's MTCNN box, stretched
        to 160 x 160, as released) or "mesh" (our detector's box, squared and black-padded).
    """

    clip_crop: str = "official"
    face_parser: str = "bisenet"
    facenet_crop: str = "mtcnn"

    def __post_init__(self) -> None:
        check_choice("identity.clip_crop", self.clip_crop, CLIP_CROPS)
        check_choice("identity.face_parser", self.face_parser, FACE_PARSERS)
        check_choice("identity.facenet_crop", self.facenet_crop, FACENET_CROPS)


@dataclass
class HeadInputConfig:
    """How a photo reaches the head prior.

    photo_fit: the head prior works on a square frame that becomes the image's frame.
        "squash" resizes the photo to 512 x 512 whatever its shape (the published script; a
        non-square face is stretched); "pad" pads it to a square with its edge pixels first
        (keeps proportions; the generated image then shows the padded frame).
    """

    photo_fit: str = "squash"

    def __post_init__(self) -> None:
        check_choice("head.photo_fit", self.photo_fit, PHOTO_FITS)


@dataclass
class CapHumanConfig:
    """The model, how photos become its conditions, and how to sample from it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    head: HeadInputConfig = field(default_factory=HeadInputConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def _format_omegaconf_error(error: OmegaConfBaseException, source: str) -> str:
    key = getattr(error, "full_key", None)
    message = str(error).splitlines()[0]
    if "not in struct" in message or "Key '" in message and "not in" in message:
        return f"{source}: unknown key '{key}'."
    if key:
        return f"{source}: bad value for '{key}': {message}"
    return f"{source}: {message}"


def resolve_config_path(path: str | os.PathLike) -> Path:
    """``path`` as given, or, for a relative path such as ``configs/tiny.yaml`` that does not
    exist from the current folder, the shipped file of that name (the repository's, or the installed
    package's copy: see caphuman/_resources.py), so the shipped configs work from any folder.
    Raises ConfigError when neither exists."""
    given = Path(path)
    if given.is_file():
        return given
    shipped = shipped_root() / given
    if not given.is_absolute() and shipped.is_file():
        return shipped
    raise ConfigError(f"Config file '{path}' does not exist.")


def _yaml_loader():
    try:
        from omegaconf._utils import get_yaml_loader

        return get_yaml_loader()
    except ImportError:  # a private helper; plain SafeLoader if it moves
        import yaml

        return yaml.SafeLoader


def load_yaml_mapping(path: str | os.PathLike, what: str = "config file"):
    """Read a YAML file that must hold a mapping (omegaconf DictConfig), with one-sentence errors
    naming the file for what users really hand us: a binary file, broken YAML, a list, a folder.

    Raises:
        ConfigError: the file cannot be read or is not a YAML mapping.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ConfigError(f"The {what} '{path}' is a folder, not a YAML file.") from None
    except FileNotFoundError:
        raise ConfigError(f"The {what} '{path}' does not exist.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"The {what} '{path}' is not a text file (it looks binary); give a YAML file.") from None
    except OSError as error:
        raise ConfigError(f"Cannot read the {what} '{path}' ({error.strerror}).") from None
    try:
        # omegaconf's loader is a yaml.SafeLoader (a YAML tag never constructs a Python object)
        # that also reads 1e-4 as a float, as OmegaConf.load does.
        data = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"The {what} '{path}' is not valid YAML{where} ({getattr(error, 'problem', None) or 'parse error'}).") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"The {what} '{path}' must hold a mapping of settings (key: value), not a {type(data).__name__}.")
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as error:
        raise ConfigError(f"The {what} '{path}' cannot be used: {str(error).splitlines()[0]}") from None


def _drop_removed_settings(settings, source: str) -> None:
    """Remove the keys of :data:`REMOVED_SETTINGS` from ``settings`` (a DictConfig), warning once each."""
    for dotted, reason in REMOVED_SETTINGS.items():
        section, key = dotted.split(".")
        if isinstance(settings.get(section), DictConfig) and key in settings[section]:
            settings[section].pop(key)
            logger.warning("%s: %s is no longer a setting (%s); ignored, delete it.", source, dotted, reason)


def load_structured(
    schema: type,
    path: str | os.PathLike | None = None,
    overrides: dict | list[str] | None = None,
    other_sections: tuple[str, ...] = (),
):
    """Build a ``schema`` dataclass from defaults, a YAML file and overrides, validated.

    Args:
        schema: a config dataclass type (e.g. :class:`CapHumanConfig`).
        path: a YAML file; missing keys keep their defaults.
        overrides: a nested dict, or dotlist strings such as ``["sampling.num_inference_steps=2"]``.
        other_sections: top-level keys of the file that belong to a larger schema and are ignored
            here (a training config holds ``training`` next to ``model`` and ``sampling``).
    Raises:
        ConfigError: unknown key, wrong type, invalid value, or unreadable file.
    """
    source = str(path) if path is not None else "config"
    try:
        merged = OmegaConf.structured(schema)
        if path is not None:
            path = resolve_config_path(path)
            loaded = load_yaml_mapping(path)
            for section in other_sections:
                loaded.pop(section, None)
            _drop_removed_settings(loaded, source)
            merged = OmegaConf.merge(merged, loaded)
        if overrides:
            extra = OmegaConf.from_dotlist(list(overrides)) if isinstance(overrides, list) else OmegaConf.create(overrides)
            _drop_removed_settings(extra, "override")
            merged = OmegaConf.merge(merged, extra)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_format_omegaconf_error(error, source)) from None
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{source}: {error}") from None


def load_config(path: str | os.PathLike | None = None, overrides: dict | list[str] | None = None) -> CapHumanConfig:
    """Load a :class:`CapHumanConfig` (see :func:`load_structured`); a training config's
    ``training`` section is ignored, so one file can drive preprocessing, training and sampling."""
    return load_structured(CapHumanConfig, path, overrides, other_sections=("training",))


def config_to_dict(config: Any) -> dict:
    """A plain dict of a config dataclass (tuples become lists, as YAML writes them)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def save_config(config: Any, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write ``config`` (plus ``extra`` run facts, e.g. the command line) as YAML, atomically."""
    data = config_to_dict(config)
    if extra:
        data = {**data, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, OmegaConf.to_yaml(OmegaConf.create(data)))


__all__ = [
    "CapHumanConfig",
    "HeadInputConfig",
    "IdentityConfig",
    "ModelConfig",
    "SamplingConfig",
    "TinyModelConfig",
    "config_to_dict",
    "load_config",
    "load_structured",
    "save_config",
]
