"""TEMPORARY stand-in for :class:`caphuman.session.CapHumanSession` (being written in parallel).

Same interface (photo -> reference faces / head params -> hint -> images), built from the code
`caphuman sample` uses today, plus ``generate(..., people=[...])`` for several people. Delete this
file and import ``caphuman.session.CapHumanSession`` once that lands (only
``caphuman/demo/backend.py`` imports it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch

from caphuman.conditions.identity import ReferenceFace
from caphuman.config import CapHumanConfig
from caphuman.errors import CapHumanError
from caphuman.head.params import HeadParams

Photo = str | os.PathLike | np.ndarray


class CapHumanSession:
    def __init__(self, config: CapHumanConfig, weights_dir: str | os.PathLike = "checkpoints", device: str = "auto"):
        from caphuman.loading import resolve_device

        self.config = config
        self.weights_dir = weights_dir
        self.device = resolve_device(device)
        self._device_name = device
        self._detector = self._head_prior = self._pipeline = self._parser = None
        self._parser_loaded = False

    @property
    def detector(self):
        if self._detector is None:
            from caphuman.faces.detection import FaceDetector

            self._detector = FaceDetector()
        return self._detector

    @property
    def head_prior(self):
        if self._head_prior is None:
            from caphuman.loading import load_head_prior

            self._head_prior = load_head_prior(self.config.model.head_prior, self.weights_dir, self.detector, self.device)
        return self._head_prior

    @property
    def pipeline(self):
        if self._pipeline is None:
            from caphuman.loading import build_pipeline

            self._pipeline = build_pipeline(self.config, self.weights_dir, self._device_name)
        return self._pipeline

    @staticmethod
    def load_photo(photo: Photo) -> np.ndarray:
        from caphuman.faces.images import load_image

        if isinstance(photo, np.ndarray):
            if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
                raise CapHumanError("A photo array must be (H, W, 3) uint8 RGB.")
            return photo
        return load_image(photo)

    @staticmethod
    def _square(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        return np.pad(image, ((top, side - height - top), (left, side - width - left), (0, 0)), mode="edge")

    def reference_faces(self, photo: Photo, face_index: int = 0) -> list[ReferenceFace]:
        from caphuman.faces.detection import select_face
        from caphuman.faces.reference import reference_face
        from caphuman.loading import face_parser_for_sampling

        image = self._square(self.load_photo(photo))
        source = "the photo" if isinstance(photo, np.ndarray) else str(photo)
        face = select_face(self.detector.detect(image), face_index, source)
        if not self._parser_loaded:
            self._parser = face_parser_for_sampling(self.config, self.weights_dir, self.device)
            self._parser_loaded = True
        pipe = self.pipeline
        return [reference_face(image, face, pipe.face_recognizer, self._parser, clip_size=pipe.image_encoder.config.image_size)]

    def head(self, photo: Photo, face_index: int = 0) -> HeadParams:
        return self.head_prior.reconstruct(self._square(self.load_photo(photo)), face_index=face_index)

    def hint(self, params: HeadParams, height: int | None = None, width: int | None = None) -> torch.Tensor:
        from caphuman.head.hint import render_hint

        height = self.config.sampling.height if height is None else int(height)
        width = self.config.sampling.width if width is None else int(width)
        side = max(height, width)
        with torch.inference_mode():
            hint = render_hint(self.head_prior, params, image_size=side).hint
        top, left = (side - height) // 2, (side - width) // 2
        return hint[..., top : top + height, left : left + width]

    def generate(
        self,
        prompt: str,
        references,
        hint,
        a_prompt: str = "",
        generator=None,
        people=None,
        body_map=None,
        body_control_strength: float = 0.0,
        **overrides: Any,
    ):
        sampling = dataclasses.replace(self.config.sampling, **{k: v for k, v in overrides.items() if v is not None})
        pipe = self.pipeline
        if generator is None:
            generator = torch.Generator(device=pipe.device).manual_seed(sampling.seed)
        text = f"{prompt}, {a_prompt}" if a_prompt else prompt
        return pipe(
            text,
            hint,
            references=references,
            people=people,
            negative_prompt=sampling.negative_prompt,
            num_images_per_prompt=sampling.num_images,
            num_inference_steps=sampling.num_inference_steps,
            guidance_scale=sampling.guidance_scale,
            identity_guidance_scale=sampling.identity_guidance_scale,
            capface_strength=sampling.capface_strength,
            mask_gating=sampling.mask_gating,
            tau=sampling.tau,
            eta=sampling.eta,
            reference_fusion=self.config.model.reference_fusion,
            generator=generator,
            body_map=body_map,
            body_control_strength=body_control_strength,
        )

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None
            self._head_prior = None

    def __enter__(self) -> CapHumanSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
