"""What the demo's buttons and sliders do, without gradio: plain values in, images and files out.

:class:`DemoBackend` owns one :class:`CapHumanSession` per style (SD 1.5 file), caches head
reconstructions per uploaded photo (so a slider move only re-renders, tens of milliseconds), and
writes every result with its settings. User problems raise :class:`CapHumanError` with one
sentence; :mod:`caphuman.demo.app` shows them in the page.

Locks: the face models (mediapipe graphs) are not thread-safe, so every photo -> conditions step
holds ``faces_lock``; generation holds ``gpu_lock`` (the gradio queue already runs one generation
at a time; the lock keeps direct Python callers equally safe). Hint previews only need the faces
lock, so they stay responsive while an image is being generated.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from caphuman.body.condition import pose_map_for
from caphuman.body.openpose_map import parse_body_modes
from caphuman.conditions.people import PersonCondition, arrange_in_row
from caphuman.config import DEFAULT_BODY_MODES, CapHumanConfig, load_config, save_config
from caphuman.errors import CapHumanError, InputImageError
from caphuman.head.hint import hint_preview
from caphuman.head.landmarks import face_points
from caphuman.head.params import HeadParams, parse_modes, set_pose, transfer
from caphuman.session import CapHumanSession
from caphuman.sweep import render_sweep, write_sweep, yaw_angles
from caphuman.weights.registry import weights_path

logger = logging.getLogger(__name__)

DEFAULT_STYLE = "config default"
PREVIEW_SIDE = 256  # hint previews are rendered at most this large: fast, and enough to see the head
MAX_SEED = 2**32 - 1
RESOLUTION_RANGE = (256, 1024)
HEAD_CACHE_SIZE = 32
Progress = Callable[[float, str], None]


@dataclass
class PersonInput:
    """One person as the page gives them: reference photo(s) and an optional pose photo."""

    reference: str | None
    more_references: list[str] = field(default_factory=list)
    pose: str | None = None
    modes: list[str] = field(default_factory=lambda: ["position", "pose"])


@dataclass
class HeadControls:
    """Direct head control on top of the photos: angles (None = from the photos) and a photo
    that lends its expression and/or lighting."""

    yaw: float | None = None
    pitch: float | None = None
    roll: float | None = None
    look_photo: str | None = None
    look_modes: list[str] = field(default_factory=list)  # "expression", "lighting"


@dataclass
class GenerationSettings:
    """Everything the official demo's panel has (tau = identity start step)."""

    prompt: str = "a photo of a person"
    added_prompt: str = ""
    negative_prompt: str = ""
    seed: int = 12345  # -1: a random seed, reported back
    num_images: int = 1
    resolution: int = 512
    capface_strength: float = 1.0
    body_control_strength: float = 0.0  # the second (OpenPose) ControlNet; needs model.body_controlnet
    body_modes: list[str] = field(default_factory=lambda: list(DEFAULT_BODY_MODES))
    tau: int = 0
    steps: int = 20
    guidance_scale: float = 7.0
    eta: float = 0.0
    style: str = DEFAULT_STYLE


@dataclass
class Result:
    """What a generation returns to the page."""

    images: list[Path]
    files: list[Path]
    seed: int
    hint_preview: Image.Image


@dataclass
class SweepResult:
    strip: Path
    gif: Path
    mp4: Path | None
    frames: list[Path]
    seed: int


def find_styles(weights_dir: str | Path) -> list[str]:
    """SD 1.5 checkpoints under ``weights_dir`` (relative paths): single files of at least 1 GB
    (.safetensors/.ckpt; VAEs and CapHuman's own files are far smaller or named so) and
    diffusers folders (with model_index.json), at most two folders deep."""
    root = Path(weights_dir)
    if not root.is_dir():
        return []
    found = []
    for depth in ("*", "*/*", "*/*/*"):
        for path in root.glob(depth):
            name = path.name.lower()
            if path.is_file() and path.suffix in (".safetensors", ".ckpt") and "vae" not in name and path.stat().st_size >= 1 << 30:
                found.append(path)
            elif path.is_file() and path.name == "model_index.json":
                found.append(path.parent)
    return sorted({str(path.relative_to(root)) for path in found})


def modes_from(names: list[str] | None) -> tuple[str, ...]:
    return parse_modes(list(names or []))


def quoted_photo_error(error: InputImageError, photo: str) -> InputImageError:
    """The error naming ``photo`` in quotes, the form the page shortens to the file's name (uploads
    live in gradio's cache folder); the page has up to six photo slots, so the name matters."""
    message = str(error)
    if f"'{photo}'" not in message:
        message = message.replace(str(photo), f"'{photo}'").replace("the input photo", f"'{photo}'")
    return InputImageError(message)


def combine_hints(hints: list[torch.Tensor]) -> torch.Tensor:
    """One picture of several people's hints: later people drawn over earlier ones."""
    combined = hints[0].clone()
    for hint in hints[1:]:
        covered = (hint != 0).any(dim=1, keepdim=True)
        combined = torch.where(covered, hint, combined)
    return combined


class DemoBackend:
    """See the module docstring. ``device``: where the pipeline runs ("auto": CUDA if present)."""

    def __init__(self, config_path: str, weights_dir: str | Path = "checkpoints", device: str = "auto", output_dir: str | Path | None = None):
        self.config_path = config_path
        self.weights_dir = Path(weights_dir)
        self.device = device
        self.base_config = load_config(config_path)
        self.output_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="caphuman-demo-"))
        self.faces_lock = threading.RLock()
        self.gpu_lock = threading.Lock()
        self._sessions_lock = threading.RLock()  # a preview and a generation may both ask for the first session
        self._sessions: dict[str, Any] = {}
        self._heads: OrderedDict[tuple[str, int], HeadParams] = OrderedDict()
        self._references: OrderedDict[tuple[str, int], list] = OrderedDict()

    # ------------------------------------------------------------------ sessions and styles

    def styles(self) -> list[str]:
        return [DEFAULT_STYLE, *find_styles(self.weights_dir)] if self.base_config.model.backbone == "sd15" else [DEFAULT_STYLE]

    def body_control_available(self) -> bool:
        """Whether the config names an OpenPose ControlNet and its file is there."""
        name = self.base_config.model.body_controlnet
        return name is not None and weights_path(self.weights_dir, name).exists()

    def config_for(self, style: str) -> CapHumanConfig:
        overrides: dict = {}
        if style not in (None, "", DEFAULT_STYLE):
            if style not in self.styles():
                raise CapHumanError(f"Style '{style}' is not an SD 1.5 file under {self.weights_dir}.")
            overrides["model"] = {"stable_diffusion": str((self.weights_dir / style).resolve())}
        if self.body_control_available() and self.base_config.sampling.body_control_strength == 0:
            # The pipeline loads the ControlNet only for a strength > 0; the page sets the strength per run.
            overrides["sampling"] = {"body_control_strength": 1.0}
        return load_config(self.config_path, overrides) if overrides else self.base_config

    def session(self, style: str = DEFAULT_STYLE):
        """The session for ``style``; switching style frees the previous pipeline first (one SD
        model in memory at a time). The default session is kept for the face models."""
        style = style or DEFAULT_STYLE
        with self._sessions_lock:
            if style not in self._sessions:
                for other in [key for key in self._sessions if key != DEFAULT_STYLE]:
                    self._sessions.pop(other).close()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self._sessions[style] = CapHumanSession(self.config_for(style), self.weights_dir, self.device)
            return self._sessions[style]

    @property
    def faces(self):
        """The session whose face models and head prior serve photos (the default one)."""
        return self.session(DEFAULT_STYLE)

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

    # ------------------------------------------------------------------ photos -> conditions

    @staticmethod
    def _cached(cache: OrderedDict, key, make):
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = make()
        cache[key] = value
        while len(cache) > HEAD_CACHE_SIZE:
            cache.popitem(last=False)
        return value

    def head(self, photo: str) -> HeadParams:
        with self.faces_lock:
            try:
                return self._cached(self._heads, (str(photo), 0), lambda: self.faces.head(photo))
            except InputImageError as error:
                raise quoted_photo_error(error, photo) from None

    def references(self, photo: str, session) -> list:
        with self.faces_lock:
            try:
                return self._cached(self._references, (str(photo), id(session)), lambda: session.reference_faces(photo))
            except InputImageError as error:
                raise quoted_photo_error(error, photo) from None

    def person_head(self, person: PersonInput, controls: HeadControls) -> HeadParams:
        """The reference's head, with the pose photo's chosen conditions, the look photo's
        expression/lighting and the angle sliders applied in that order."""
        if not person.reference:
            raise CapHumanError("Upload a reference photo first.")
        params = self.head(person.reference)
        if person.pose:
            params = transfer(params, self.head(person.pose), modes_from(person.modes) or ("position", "pose"))
        if controls.look_photo and controls.look_modes:
            params = transfer(params, self.head(controls.look_photo), modes_from(controls.look_modes))
        return set_pose(params, controls.yaw, controls.pitch, controls.roll)

    def people_heads(self, people: list[PersonInput], controls: HeadControls) -> list[HeadParams]:
        heads = [self.person_head(person, controls) for person in people]
        placed_by_photo = all(person.pose and "position" in (person.modes or []) for person in people)
        if len(heads) > 1 and not placed_by_photo:
            heads = arrange_in_row(heads)  # nobody said where: side by side, left to right
        return heads

    def hints(self, heads: list[HeadParams], side: int) -> list[torch.Tensor]:
        with self.faces_lock:
            return [self.faces.hint(head, side, side) for head in heads]

    def preview(self, people: list[PersonInput], controls: HeadControls, resolution: int = PREVIEW_SIDE) -> Image.Image:
        """The hint preview (normals | albedo | shaded) for the current photos and sliders."""
        people = [person for person in people if person.reference]
        if not people:
            raise CapHumanError("Upload a reference photo first.")
        side = min(int(resolution), PREVIEW_SIDE)
        return hint_preview(combine_hints(self.hints(self.people_heads(people, controls), side)))

    # ------------------------------------------------------------------ generation

    @staticmethod
    def check_settings(settings: GenerationSettings) -> GenerationSettings:
        """Validate the panel's numbers before any model runs; returns a copy with the seed drawn."""
        low, high = RESOLUTION_RANGE
        if not low <= int(settings.resolution) <= high or int(settings.resolution) % 64:
            raise CapHumanError(f"Resolution must be a multiple of 64 between {low} and {high}, got {settings.resolution}.")
        checks = [
            ("Images", settings.num_images, 1, 12),
            ("Steps", settings.steps, 1, 100),
            ("Guidance scale", settings.guidance_scale, 0, 30),
            ("CapFace strength", settings.capface_strength, 0, 2),
            ("Second ControlNet strength", settings.body_control_strength, 0, 2),
            ("Identity start step", settings.tau, 0, 1000),
            ("eta", settings.eta, 0, 1),
        ]
        for name, value, low, high in checks:
            if value is None or not low <= float(value) <= high:
                raise CapHumanError(f"{name} must be between {low} and {high}, got {value}.")
        seed = int(settings.seed) if settings.seed is not None else -1
        if seed == -1:
            seed = random.randint(0, MAX_SEED)
        elif not 0 <= seed <= MAX_SEED:
            raise CapHumanError(f"Seed must be -1 (random) or between 0 and {MAX_SEED}, got {seed}.")
        return dataclasses.replace(
            settings,
            seed=seed,
            num_images=int(settings.num_images),
            steps=int(settings.steps),
            tau=int(settings.tau),
            resolution=int(settings.resolution),
        )

    def _conditions(self, people: list[PersonInput], controls: HeadControls, settings: GenerationSettings, session):
        people = [person for person in people if person.reference]
        if not people:
            raise CapHumanError("Upload a reference photo first.")
        for person in people:  # read every photo before any model work, so a bad file fails fast
            for photo in [person.reference, *person.more_references, person.pose]:
                if photo:
                    CapHumanSession.load_photo(photo)
        heads = self.people_heads(people, controls)
        hints = self.hints(heads, settings.resolution)
        references = [
            [face for photo in [person.reference, *person.more_references] for face in self.references(photo, session)] for person in people
        ]
        return people, heads, hints, references

    def body_map(self, people: list[PersonInput], heads: list[HeadParams], settings: GenerationSettings):
        """The OpenPose ControlNet's map (None when its strength is 0): each person's body from
        their pose photo (else their reference) and face dots from their head, drawn together."""
        if not settings.body_control_strength:
            return None
        if not self.body_control_available():
            raise CapHumanError(
                "The second ControlNet needs the OpenPose ControlNet: set model.body_controlnet in the config and put the "
                "file under the weights folder (`caphuman download body_controlnet`)."
            )

        layers = parse_body_modes(list(settings.body_modes or []) or list(DEFAULT_BODY_MODES))
        maps = []
        with self.faces_lock:
            for person, head in zip(people, heads, strict=True):
                points = None
                if "face" in layers:
                    try:
                        points = face_points(self.faces.head_prior, head)
                    except NotImplementedError as error:  # a head prior without landmarks: body and hands only
                        logger.warning("%s The body map has no face dots.", error)
                photo = self.faces.head_input(person.pose or person.reference)  # the frame the hint is drawn in
                maps.append(pose_map_for(photo, settings.resolution, settings.resolution, layers, face_points=points))
        return np.maximum.reduce(maps)

    def _sampling_overrides(self, settings: GenerationSettings) -> dict:
        return {
            "seed": settings.seed,
            "num_images": settings.num_images,
            "num_inference_steps": settings.steps,
            "guidance_scale": float(settings.guidance_scale),
            "capface_strength": float(settings.capface_strength),
            "tau": settings.tau,
            "eta": float(settings.eta),
            "negative_prompt": settings.negative_prompt or "",
        }

    @staticmethod
    def _saved_sampling(settings: GenerationSettings) -> dict:
        """What config.yaml records beyond the per-call overrides."""
        return {
            "height": settings.resolution,
            "width": settings.resolution,
            "body_control_strength": float(settings.body_control_strength),
            "body_modes": ",".join(settings.body_modes or DEFAULT_BODY_MODES),
        }

    def _run(self, session, prompt: str, references: list, hints: list[torch.Tensor], settings: GenerationSettings, **overrides):
        """One generation with the GPU lock held; several people go through ``people=``."""
        kwargs = {**self._sampling_overrides(settings), **overrides}
        with self.gpu_lock:
            try:
                if len(hints) == 1:
                    return session.generate(prompt, references[0], hints[0], a_prompt=settings.added_prompt, **kwargs)
                people = [PersonCondition(hint=hint, references=refs) for hint, refs in zip(hints, references, strict=True)]
                return session.generate(prompt, None, None, a_prompt=settings.added_prompt, people=people, **kwargs)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                raise CapHumanError("The GPU ran out of memory: try fewer images, a lower resolution or fewer people.") from None

    def _request_dir(self, kind: str) -> Path:
        folder = self.output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{random.randint(0, 1 << 30):08x}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _settings_facts(self, people: list[PersonInput], controls: HeadControls, settings: GenerationSettings, heads) -> dict:
        return {
            "run": {
                "demo": True,
                "prompt": settings.prompt,
                "added_prompt": settings.added_prompt,
                "style": settings.style,
                "resolution": settings.resolution,
                "people": [
                    {
                        "reference": Path(p.reference).name,
                        "more_references": [Path(m).name for m in p.more_references],
                        "pose": Path(p.pose).name if p.pose else None,
                        "modes": list(p.modes or []),
                    }
                    for p in people
                ],
                "yaw": controls.yaw,
                "pitch": controls.pitch,
                "roll": controls.roll,
                "look_photo": Path(controls.look_photo).name if controls.look_photo else None,
                "look_modes": list(controls.look_modes),
                "head_rotation_degrees": [[round(float(v), 3) for v in head.rotation[0].tolist()] for head in heads],
            }
        }

    def generate(self, people: list[PersonInput], controls: HeadControls, settings: GenerationSettings, progress: Progress | None = None) -> Result:
        """Images for the page: PNGs (each carrying its settings as a 'caphuman_config' text
        chunk) and one config.yaml, in a fresh folder under ``output_dir``."""
        settings = self.check_settings(settings)
        session = self.session(settings.style)
        if progress:
            progress(0.0, "Reading the photos")
        people, heads, hints, references = self._conditions(people, controls, settings, session)
        body_map = self.body_map(people, heads, settings)
        if progress:
            progress(0.1, "Generating")
        body = {"body_map": body_map, "body_control_strength": float(settings.body_control_strength)} if body_map is not None else {}
        # The denoising loop is nearly all the time: move the page's bar with each step.
        step_progress = None
        if progress:

            def step_progress(_pipe, index: int, _timestep, _tensors: dict) -> None:  # diffusers' callback_on_step_end
                progress(0.1 + 0.9 * (index + 1) / settings.steps, f"Step {index + 1}/{settings.steps}")

        output = self._run(session, settings.prompt, references, hints, settings, callback_on_step_end=step_progress, **body)

        folder = self._request_dir("images")
        config = dataclasses.replace(
            session.config,
            sampling=dataclasses.replace(session.config.sampling, **self._saved_sampling(settings), **self._sampling_overrides(settings)),
        )
        facts = self._settings_facts(people, controls, settings, heads)
        save_config(config, folder / "config.yaml", extra=facts)
        text = PngImagePlugin.PngInfo()
        text.add_text("caphuman_config", (folder / "config.yaml").read_text(encoding="utf-8"))
        images = []
        for index, image in enumerate(output.images):
            path = folder / f"caphuman_{settings.seed}_{index:02d}.png"
            image.save(path, pnginfo=text)
            images.append(path)
        preview = hint_preview(combine_hints(hints))
        preview.save(folder / "hint.png")
        return Result(images=images, files=[*images, folder / "config.yaml"], seed=settings.seed, hint_preview=preview)

    def sweep(
        self,
        person: PersonInput,
        controls: HeadControls,
        settings: GenerationSettings,
        yaw_from: float,
        yaw_to: float,
        frames: int,
        progress: Progress | None = None,
    ) -> SweepResult:
        """'Turn the head': the same as `caphuman sweep` for the page's person and settings."""
        yaws = yaw_angles(float(yaw_from), float(yaw_to), int(frames))
        settings = self.check_settings(dataclasses.replace(settings, num_images=1))
        session = self.session(settings.style)
        people, heads, _, references = self._conditions([person], controls, settings, session)
        overrides = self._sampling_overrides(settings)
        with self.gpu_lock:
            try:
                result = render_sweep(
                    session,
                    settings.prompt,
                    references[0],
                    heads[0],
                    yaws,
                    settings.resolution,
                    settings.resolution,
                    on_frame=(lambda done, total: progress(done / total, f"Frame {done}/{total}")) if progress else None,
                    a_prompt=settings.added_prompt,
                    **overrides,
                )
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                raise CapHumanError("The GPU ran out of memory: try a lower resolution or fewer frames.") from None
        folder = self._request_dir("sweep")
        written = write_sweep(result, folder)
        facts = self._settings_facts(people, controls, settings, heads)
        facts["run"]["yaws"] = yaws
        save_config(
            dataclasses.replace(
                session.config,
                sampling=dataclasses.replace(session.config.sampling, height=settings.resolution, width=settings.resolution, **overrides),
            ),
            folder / "config.yaml",
            extra=facts,
        )
        return SweepResult(
            strip=written["sheet"], gif=written["gif"], mp4=written.get("mp4"), frames=sorted(folder.glob("frame_*.png")), seed=settings.seed
        )
