"""One path from photos to model inputs to images: :class:`CapHumanSession`.

Sampling (``caphuman sample``), evaluation, preprocessing for training, ``caphuman inspect`` and
the demo all turn photos into conditions through this object, so training and sampling see
identical conditions by construction:

    photo --reference_faces--> recogniser crop + CLIP input (non-face white)   [identity]
    photo --head--> HeadParams --hint--> (1, 9, H, W) normals | albedo | shaded  [head]
    prompt + references + hint --generate--> images

Models load on first use (mediapipe detector, MTCNN, face parser, recogniser, head prior,
pipeline), so a command that only needs crops never loads Stable Diffusion, and a missing weights
file is reported only by the step that needs it.

Example::

    from caphuman.config import load_config
    from caphuman.session import CapHumanSession

    with CapHumanSession(load_config("configs/caphuman_sd15.yaml"), weights_dir="checkpoints") as session:
        references = session.reference_faces("face.jpg")
        params = session.head("face.jpg")
        images = session.generate("a photo of a man, in the snow", references, session.hint(params)).images
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from caphuman.build import build_pipeline, load_face_parser, load_face_recognizer, load_head_prior, resolve_device
from caphuman.conditions.identity import ReferenceFace
from caphuman.conditions.text import join_prompt
from caphuman.config import CapHumanConfig, SamplingConfig
from caphuman.errors import CapHumanError
from caphuman.faces.alignment import arcface_crop, clip_face_crop, facenet_crop
from caphuman.faces.bisenet import FaceParser
from caphuman.faces.clip_input import CLIP_INPUT_SIZE, official_clip_input
from caphuman.faces.detection import FaceDetector, select_face
from caphuman.faces.images import load_image
from caphuman.faces.mesh_mask import face_mask, face_region_mask_from_labels
from caphuman.faces.mtcnn import MtcnnCropper
from caphuman.head.hint import render_hint
from caphuman.head.params import HeadParams
from caphuman.head.photo_fit import fit_photo
from caphuman.head.renderer import MeshRenderer
from caphuman.pipeline import StepEndCallback
from caphuman.weights.registry import default_location

logger = logging.getLogger(__name__)

Photo = str | os.PathLike | np.ndarray

# The aligned crop each recogniser reads (FaceRecognizer.crop), known before loading its weights.
RECOGNIZER_CROPS = {"facenet": "facenet160", "tiny": "facenet160", "arcface": "arcface112", "dlib": "dlib150"}
# Sampling settings generate() takes as keyword overrides (SamplingConfig field names).
_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingConfig)}
_NOT_PER_CALL = {"height", "width", "dtype", "attention", "scheduler"}  # fixed by the hint or the loaded pipeline


@dataclass
class ReferenceInputs:
    """Everything made from one reference photo on the way to the identity models.

    Attributes:
        photo: (H, W, 3) uint8 RGB, as read (EXIF rotation applied).
        face: the chosen face (our mediapipe detector, in ``photo`` pixels).
        recognizer_crop: the recogniser's input, e.g. FaceNet's 160 x 160 before prewhitening.
        recognizer_crop_source: "mtcnn", "mesh" (our detector's box), "arcface112" or "dlib150".
        face_region: (H, W) bool, True on the face classes CLIP keeps (in ``photo`` pixels).
        face_parser: "bisenet" or "mesh" (which model made ``face_region``).
        clip_input: (224, 224, 3) uint8, non-face white, framed per ``identity.clip_crop``.
    """

    photo: np.ndarray
    face: Any
    recognizer_crop: np.ndarray
    recognizer_crop_source: str
    face_region: np.ndarray
    face_parser: str
    clip_input: np.ndarray

    def reference_face(self) -> ReferenceFace:
        return ReferenceFace(recognizer_crop=self.recognizer_crop, clip_crop=self.clip_input)


class CapHumanSession:
    """Photos -> reference crops, head parameters, hints and images, with lazily loaded models.

    Args:
        config: model, identity, head-input and sampling settings.
        weights_dir: folder with the weights files (see checkpoints/README.md).
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:N".
        progress_bar: show the denoising progress bar (off for many small runs, e.g. evaluation).
    """

    def __init__(
        self,
        config: CapHumanConfig,
        weights_dir: str | os.PathLike = "checkpoints",
        device: str | torch.device | None = "auto",
        progress_bar: bool = True,
    ):
        self.config = config
        self.weights_dir = str(weights_dir)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.progress_bar = progress_bar
        self._detector = None
        self._mtcnn = None
        self._parser: Any = None
        self._parser_loaded = False
        self._recognizer = None
        self._head_prior = None
        self._pipeline = None
        self._renderers: dict[int, Any] = {}  # side -> MeshRenderer, reused across hints

    # ------------------------------------------------------------------ lazily loaded models

    @property
    def detector(self):
        """mediapipe face detector + 478-point mesh (ships in its wheel)."""
        if self._detector is None:
            self._detector = FaceDetector(max_faces=5)
        return self._detector

    @property
    def mtcnn(self):
        """facenet-pytorch's MTCNN (its weights ship in its wheel)."""
        if self._mtcnn is None:
            self._mtcnn = MtcnnCropper(device=self.device)
        return self._mtcnn

    @property
    def face_parser(self):
        """BiSeNet (a FaceParser) or None for the mesh oval, per ``identity.face_parser``.

        Raises:
            MissingWeightsError: "bisenet" was asked for and its file is missing.
        """
        if not self._parser_loaded:
            choice = self.config.identity.face_parser
            if choice == "mesh":
                self._parser = None
            elif choice == "bisenet":
                self._parser = FaceParser.from_file(default_location("face_parsing", self.weights_dir), device=self.device)
            else:
                self._parser = load_face_parser(self.weights_dir, self.device)
                if self._parser is None:
                    path = default_location("face_parsing", self.weights_dir)
                    logger.info("No face-parsing weights at %s; using the face-mesh oval as the face region.", path)
            self._parser_loaded = True
        return self._parser

    @property
    def face_parser_name(self) -> str:
        """ "bisenet" or "mesh": what :meth:`face_region` uses (loads the parser to find out)."""
        return "mesh" if self.face_parser is None else "bisenet"

    @property
    def recognizer(self):
        """The global identity model (FaceNet, ArcFace, dlib or the tiny stand-in)."""
        if self._recognizer is None:
            self._recognizer = load_face_recognizer(self.config, self.weights_dir, self.device)
        return self._recognizer

    @property
    def head_prior(self):
        """DECA/FLAME or the built-in prior (``model.head_prior``), sharing the detector."""
        if self._head_prior is None:
            self._head_prior = load_head_prior(self.config.model.head_prior, self.weights_dir, self.detector, self.device)
        return self._head_prior

    @property
    def pipeline(self):
        """The CapHuman pipeline (backbone, adapter, scheduler), sharing this session's recogniser."""
        if self._pipeline is None:
            self._pipeline = build_pipeline(self.config, self.weights_dir, str(self.device), face_recognizer=self.recognizer)
            self._pipeline.set_progress_bar_config(disable=not self.progress_bar)
        return self._pipeline

    def load_condition_models(self) -> None:
        """Load every model that turns photos into conditions now (not the pipeline), so a
        missing weights file is reported before any photo is processed."""
        uses_mtcnn = RECOGNIZER_CROPS[self.config.model.face_recognizer] == "facenet160" and self.config.identity.facenet_crop == "mtcnn"
        loaded = [self.detector, self.face_parser, self.recognizer, self.head_prior, self.mtcnn if uses_mtcnn else None]
        logger.debug("Condition models ready: %s", ", ".join(type(model).__name__ for model in loaded if model is not None))

    # ------------------------------------------------------------------ photos

    @staticmethod
    def load_photo(photo: Photo) -> np.ndarray:
        """A path (read with EXIF rotation, any mode -> RGB) or an (H, W, 3) uint8 array."""
        if isinstance(photo, np.ndarray):
            if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
                raise CapHumanError(f"A photo array must be (H, W, 3) uint8 RGB, got {photo.shape} {photo.dtype}.")
            return np.ascontiguousarray(photo)

        return load_image(photo)

    @staticmethod
    def _source(photo: Photo) -> str:
        return "the photo" if isinstance(photo, np.ndarray) else str(photo)

    def detect(self, image: np.ndarray, face_index: int = 0, source: str = "the photo"):
        """The ``face_index``-th largest face (InputImageError when there is none)."""
        return select_face(self.detector.detect(image), face_index, source)

    # ------------------------------------------------------------------ identity

    def recognizer_crop(self, image: np.ndarray, face, face_index: int = 0) -> tuple[np.ndarray, str]:
        """(crop, how it was made) for the configured recogniser; loads no recogniser weights
        except dlib's (which ship in a package)."""
        kind = RECOGNIZER_CROPS[self.config.model.face_recognizer]
        if kind == "arcface112":
            return arcface_crop(image, face).image, kind
        if kind == "dlib150":
            return self.recognizer.chip(image, face), kind
        if self.config.identity.facenet_crop == "mtcnn":
            # Index 0: MTCNN's own largest face, as the official script picks it. Otherwise the
            # MTCNN face on the one our detector numbered face_index.
            crop = self.mtcnn.facenet_input(image, near_box=None if face_index == 0 else face.box)
            if crop is not None:
                return crop, "mtcnn"
            logger.warning(
                "MTCNN found no face where our detector did; FaceNet gets our detector's box instead "
                "(the official script would feed the whole photo resized to 160 px, unnormalised)."
            )
        return facenet_crop(image, face).image, "mesh"

    def face_region(self, image: np.ndarray, face, native_size: bool = True) -> np.ndarray:
        """(H, W) bool face classes of ``image``: BiSeNet labels, or the mesh's face oval.

        ``native_size`` parses the photo at its own size (the official script); False resizes it
        to BiSeNet's training size 512 first.
        """
        parser = self.face_parser
        if parser is None:
            return face_mask(image.shape, face)
        return face_region_mask_from_labels(parser.parse(image, native_size=native_size))

    def clip_input(self, image: np.ndarray, face, region: np.ndarray) -> np.ndarray:
        """The 224 x 224 CLIP input per ``identity.clip_crop`` (non-face white)."""
        if self.config.identity.clip_crop == "official":
            return official_clip_input(image, region, CLIP_INPUT_SIZE)
        return clip_face_crop(image, face, region, size=CLIP_INPUT_SIZE).image

    def reference_inputs(self, photo: Photo, face_index: int = 0, source: str | None = None) -> ReferenceInputs:
        """Every intermediate of one reference photo (see :class:`ReferenceInputs`); ``source``
        names the photo in errors (default: its path)."""
        image = self.load_photo(photo)
        face = self.detect(image, face_index, source or self._source(photo))
        crop, crop_source = self.recognizer_crop(image, face, face_index)
        # Official: BiSeNet on the whole photo at its native size. Aligned crops keep the mask
        # BiSeNet gives at its 512 training size, warped with the crop.
        region = self.face_region(image, face, native_size=self.config.identity.clip_crop == "official")
        return ReferenceInputs(
            photo=image,
            face=face,
            recognizer_crop=crop,
            recognizer_crop_source=crop_source,
            face_region=region,
            face_parser=self.face_parser_name,
            clip_input=self.clip_input(image, face, region),
        )

    def reference_faces(self, photo: Photo, face_index: int = 0) -> list[ReferenceFace]:
        """The pipeline's reference input for one photo (a one-item list; concatenate the lists
        of several photos of one person)."""
        return [self.reference_inputs(photo, face_index).reference_face()]

    def embed(self, references: list[ReferenceFace]) -> torch.Tensor:
        """(R, G) global identity embeddings of reference faces (CPU float32)."""
        return self.recognizer.embed([reference.recognizer_crop for reference in references])

    # ------------------------------------------------------------------ head

    def head_input(self, photo: Photo) -> np.ndarray:
        """The square image the head prior reconstructs from (``head.photo_fit``)."""
        return fit_photo(self.load_photo(photo), self.config.head.photo_fit)

    def head(self, photo: Photo, face_index: int = 0) -> HeadParams:
        """Head parameters (B = 1) of one face; the hint frame is the fitted square photo."""
        # The photo's name goes into errors (a pose photo without a face says which file).
        return self.head_prior.reconstruct(self.head_input(photo), face_index=face_index, source=self._source(photo))

    def hint(self, params: HeadParams, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """(B, 9, height, width) hint: rendered square at the longer side, then centre-cropped
        (the head prior's frame is square). Defaults: ``sampling.height`` / ``sampling.width``."""
        height = self.config.sampling.height if height is None else int(height)
        width = self.config.sampling.width if width is None else int(width)
        side = max(height, width)
        if side not in self._renderers:
            self._renderers[side] = MeshRenderer(side)
        with torch.inference_mode():
            hint = render_hint(self.head_prior, params, image_size=side, renderer=self._renderers[side]).hint
        top, left = (side - height) // 2, (side - width) // 2
        return hint[..., top : top + height, left : left + width]

    # ------------------------------------------------------------------ generation

    def sampling_settings(self, **overrides: Any) -> SamplingConfig:
        """``sampling`` with per-call overrides (None values ignored), validated."""
        unknown = set(overrides) - _SAMPLING_FIELDS
        fixed = set(overrides) & _NOT_PER_CALL
        if unknown or fixed:
            names = ", ".join(sorted(unknown | fixed))
            raise CapHumanError(f"generate() cannot override {names}; set them in the config (image size comes from the hint).")
        return dataclasses.replace(self.config.sampling, **{key: value for key, value in overrides.items() if value is not None})

    def generate(
        self,
        prompt: str | list[str],
        references: list[ReferenceFace],
        hint: torch.Tensor,
        a_prompt: str = "",
        generator: torch.Generator | list[torch.Generator] | None = None,
        body_map: np.ndarray | torch.Tensor | None = None,
        people: list | None = None,
        callback_on_step_end: StepEndCallback | None = None,
        **overrides: Any,
    ):
        """Images of the reference person for ``prompt`` with the head in ``hint``.

        Args:
            prompt: the text prompt, or a list (batch B, each with ``num_images`` images).
            references: from :meth:`reference_faces` (several photos of one person allowed).
            hint: (1, 9, H, W) from :meth:`hint`, or (B, 9, H, W) one per prompt; sets the image size.
            a_prompt: appended as ", <a_prompt>" when not empty (the official ``--a_prompt``).
            generator: explicit generator(s); default: one seeded with ``sampling.seed`` on the
                pipeline's device (the official script draws its noise on the GPU after seeding).
            body_map: the OpenPose ControlNet's pose map (used when ``sampling.body_control_strength``
                > 0 and the config names ``model.body_controlnet``).
            people: several people instead of ``references`` and ``hint`` (pass None for both): a list
                of :class:`caphuman.conditions.people.PersonCondition`, each with its own references and
                hint on the full canvas; one CapFace pass per person, each gated by its own mask.
            callback_on_step_end: the pipeline's (diffusers') step-end callback,
                ``callback(pipe, step_index, timestep, callback_kwargs)`` after each denoising step
                (the demo moves its progress bar with it).
            overrides: SamplingConfig fields for this call (num_images, num_inference_steps,
                guidance_scale, capface_strength, mask_gating, tau, eta, seed, negative_prompt...).
        Returns:
            CapHumanPipelineOutput (``.images``: PIL images).
        """
        sampling = self.sampling_settings(**overrides)
        pipe = self.pipeline
        if generator is None:
            generator = torch.Generator(device=pipe.device).manual_seed(sampling.seed)
        return pipe(
            join_prompt(prompt, a_prompt) if isinstance(prompt, str) else [join_prompt(text, a_prompt) for text in prompt],
            hint,
            references=references,
            generator=generator,
            body_map=body_map,
            people=people,
            callback_on_step_end=callback_on_step_end,
            **sampling.pipeline_kwargs(self.config.model.reference_fusion),
        )

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Release the mediapipe graphs (the rest is freed with the object)."""
        if self._detector is not None:
            self._detector.close()
            self._detector = None
            self._head_prior = None  # it holds the closed detector

    def __enter__(self) -> CapHumanSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
