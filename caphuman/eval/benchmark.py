"""The benchmark spec (prompts x head conditions x seeds) and the identities it is run on.

A benchmark is a YAML file (configs/benchmarks/*.yaml) read into :class:`BenchmarkSpec`. The
paper's HumanIPHC shape is 100 identities x 35 prompts x 10 head conditions x 3 images; the
identities are reference photos in a folder (one photo per identity, the file stem is its id).

A prompt is a template whose ``{subject}`` is replaced by the identity's subject word ("person"
by default; a ``subjects.yaml`` next to the photos may map a photo's stem to "man", "woman"...,
because CapHuman's published prompts name the class, e.g. "a photo of a man, in the snow").

A head condition is what the generated head should look like: the reference's own head with
the angles given (``None`` keeps the reference's angle) and, optionally, conditions taken from a
driver photo as in ``caphuman sample --pose-ref``. :meth:`HeadCondition.apply` gives the
requested head parameters, which the head metrics compare with the head re-estimated from the
generated image.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from caphuman.checks import check_range, check_seed
from caphuman.config import load_structured, load_yaml_mapping
from caphuman.errors import ConfigError, InputImageError
from caphuman.head.params import HeadParams, parse_modes, set_pose, transfer

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SUBJECTS_FILE = "subjects.yaml"
_SLUG_LENGTH = 48


@dataclass
class PromptSpec:
    """One prompt template.

    Attributes:
        text: the prompt, with ``{subject}`` where the identity's class word goes.
        category: the kind of context it tests (clothing/accessories, scene, action, style...).
    """

    text: str = ""
    category: str = "other"

    def render(self, subject: str) -> str:
        return self.text.replace("{subject}", subject)

    @property
    def prompt_id(self) -> str:
        """A folder-safe id derived from the text, so editing a prompt never reuses old images."""
        return slugify(self.text.replace("{subject}", ""))


@dataclass
class HeadCondition:
    """A requested head: angles in degrees (params.py conventions) and/or a driver photo.

    Attributes:
        name: unique, folder-safe name (e.g. "yaw-20_pitch+15").
        yaw, pitch, roll: degrees; ``None`` keeps the reference's (or driver's) angle.
        driver: optional photo whose conditions (``modes``) are transferred; relative paths are
            relative to the benchmark file.
        modes: transfer modes for ``driver`` (see caphuman.head.params.transfer).
    """

    name: str = ""
    yaw: float | None = None
    pitch: float | None = None
    roll: float | None = None
    driver: str | None = None
    modes: str = "position,pose"

    def apply(self, reference: HeadParams, driver: HeadParams | None = None) -> HeadParams:
        """The requested head parameters for a reference head (B = 1).

        Identity shape and albedo always stay the reference's; the driver (when the condition
        has one) gives ``modes``; explicit angles win over both.
        """
        params = reference
        if self.driver is not None:
            if driver is None:
                raise ValueError(f"Head condition '{self.name}' needs the reconstruction of its driver photo {self.driver}.")
            params = transfer(reference, driver, self.modes)
        if any(angle is not None for angle in (self.yaw, self.pitch, self.roll)):
            params = set_pose(params, self.yaw, self.pitch, self.roll)
        return params if params is not reference else reference.clone()

    def values(self) -> dict:
        """What defines the condition (for the run manifest's consistency check)."""
        return {"yaw": self.yaw, "pitch": self.pitch, "roll": self.roll, "driver": self.driver, "modes": self.modes}


@dataclass
class BenchmarkSpec:
    """Prompts x head conditions x seeds, applied to every identity.

    Attributes:
        name: benchmark name (shown in reports).
        description: where the prompts and conditions come from.
        prompts: prompt templates (HumanIPHC: 35).
        conditions: head conditions (HumanIPHC: 10).
        seeds: one generated image per seed (HumanIPHC: 3 images per prompt and condition).
        default_subject: the ``{subject}`` word when subjects.yaml does not name one.
        max_identities: use at most this many identities (sorted by id); null: all.
    """

    name: str = "benchmark"
    description: str = ""
    prompts: list[PromptSpec] = field(default_factory=list)
    conditions: list[HeadCondition] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    default_subject: str = "person"
    max_identities: int | None = None

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError(f"Benchmark '{self.name}' lists no prompts.")
        if not self.conditions:
            raise ConfigError(f"Benchmark '{self.name}' lists no head conditions.")
        if not self.seeds:
            raise ConfigError(f"Benchmark '{self.name}' lists no seeds.")
        for seed in self.seeds:
            check_seed(f"Benchmark '{self.name}' seed", seed)
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"Benchmark '{self.name}' repeats a seed: {list(self.seeds)}.")
        prompt_ids = [prompt.prompt_id for prompt in self.prompts]
        duplicates = sorted({pid for pid in prompt_ids if prompt_ids.count(pid) > 1})
        if duplicates:
            raise ConfigError(f"Benchmark '{self.name}' has prompts that differ only in punctuation or case: {duplicates}.")
        names = [condition.name for condition in self.conditions]
        for condition in self.conditions:
            if not condition.name or slugify(condition.name) != condition.name.lower():
                raise ConfigError(f"Head condition name '{condition.name}' must be non-empty and use only letters, digits, '-', '+' and '_'.")
            for axis in ("yaw", "pitch", "roll"):
                angle = getattr(condition, axis)
                if angle is not None:
                    check_range(f"Head condition '{condition.name}' {axis}", angle, -180.0, 180.0)
            if condition.driver is None and all(a is None for a in (condition.yaw, condition.pitch, condition.roll)):
                logger.debug("Head condition '%s' keeps the reference's own head.", condition.name)
            if condition.driver is not None:
                parse_modes(condition.modes)
        if len(set(names)) != len(names):
            raise ConfigError(f"Benchmark '{self.name}' repeats a head condition name: {names}.")
        if self.max_identities is not None and self.max_identities < 1:
            raise ConfigError(f"max_identities must be >= 1, got {self.max_identities}.")

    @property
    def images_per_identity(self) -> int:
        return len(self.prompts) * len(self.conditions) * len(self.seeds)


@dataclass(frozen=True)
class Identity:
    """One reference photo of the benchmark.

    Attributes:
        identity_id: the photo's file stem (folder-safe).
        path: the photo.
        subject: the word that replaces ``{subject}`` in prompts.
    """

    identity_id: str
    path: Path
    subject: str


def slugify(text: str) -> str:
    """Lower-case, letters/digits/+/-/_ only, runs of anything else as one '-', at most 48 chars."""
    slug = re.sub(r"[^a-z0-9+_-]+", "-", text.lower()).strip("-")
    return slug[:_SLUG_LENGTH].rstrip("-") or "x"


def load_benchmark(path: str | Path, overrides: list[str] | None = None) -> BenchmarkSpec:
    """Read a benchmark YAML (see configs/benchmarks/); driver paths become absolute.

    Raises:
        ConfigError: missing file, unknown key, or an invalid spec.
    """
    spec: BenchmarkSpec = load_structured(BenchmarkSpec, path, overrides)
    base = Path(path).resolve().parent
    for condition in spec.conditions:
        if condition.driver is not None and not Path(condition.driver).is_absolute():
            condition.driver = str(base / condition.driver)
    return spec


def find_identities(folder: str | Path, default_subject: str = "person", limit: int | None = None) -> list[Identity]:
    """Every reference photo in ``folder`` (not recursive), sorted by file name.

    Args:
        folder: the identities folder; an optional subjects.yaml maps file stems to subject words.
        default_subject: the subject word for photos subjects.yaml does not list.
        limit: keep the first ``limit`` identities.
    Raises:
        InputImageError: the folder is missing or has no photos; two photos share a stem.
        ConfigError: subjects.yaml is not a mapping of stems to words.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputImageError(f"Identities folder '{folder}' does not exist.")
    photos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise InputImageError(f"Identities folder '{folder}' has no photos ({', '.join(IMAGE_SUFFIXES)}).")
    subjects: dict = {}
    subjects_path = folder / SUBJECTS_FILE
    if subjects_path.is_file():
        from omegaconf import OmegaConf

        subjects = OmegaConf.to_container(load_yaml_mapping(subjects_path, "subjects file"))
        if not isinstance(subjects, dict) or not all(isinstance(v, str) for v in subjects.values()):
            raise ConfigError(f"{subjects_path} must map photo names (without extension) to a word such as 'man' or 'woman'.")
    identities: list[Identity] = []
    seen: dict[str, Path] = {}
    for photo in photos:
        identity_id = slugify(photo.stem)
        if identity_id in seen:
            raise InputImageError(
                f"Photos '{seen[identity_id].name}' and '{photo.name}' in {folder} map to the same identity id '{identity_id}'; rename one."
            )
        seen[identity_id] = photo
        identities.append(Identity(identity_id, photo, str(subjects.get(photo.stem, default_subject))))
    return identities[:limit] if limit is not None else identities


__all__ = [
    "BenchmarkSpec",
    "HeadCondition",
    "Identity",
    "PromptSpec",
    "find_identities",
    "load_benchmark",
    "slugify",
]
