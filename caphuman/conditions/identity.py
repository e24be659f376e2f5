"""Reference faces -> identity inputs -> identity tokens.

Two frozen feature extractors feed the trainable :class:`IdentityEncoder`:
- a face recogniser's global embedding of the aligned face crop;
- CLIP vision's last hidden state of the reference face with non-face parts painted white.
``IdentityInputs`` holds what the extractors consume; :func:`identity_tokens` runs CLIP and the
projections. Detection, alignment and parsing that make the crops live in :mod:`caphuman.faces`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import CLIPImageProcessor, CLIPVisionModel

from caphuman.faces.recognizer import FaceRecognizer
from caphuman.models.identity_encoder import IdentityEncoder


@dataclass
class ReferenceFace:
    """One reference photo, already cropped for each consumer.

    Attributes:
        recognizer_crop: RGB uint8 (h, w, 3) aligned the way the recogniser expects.
        clip_crop: RGB uint8 (H, W, 3) face crop with non-face pixels painted white.
    """

    recognizer_crop: np.ndarray
    clip_crop: np.ndarray


@dataclass
class IdentityInputs:
    """Precomputed identity inputs for a batch.

    Attributes:
        face_embeds: (B, R, G) global embeddings of R reference photos per sample.
        clip_pixel_values: (B, R, 3, S, S) CLIP-normalised masked face crops.
    """

    face_embeds: torch.Tensor
    clip_pixel_values: torch.Tensor

    def __post_init__(self) -> None:
        if self.face_embeds.ndim == 2:
            self.face_embeds = self.face_embeds[None]
        if self.clip_pixel_values.ndim == 4:
            self.clip_pixel_values = self.clip_pixel_values[None]
        if self.face_embeds.ndim != 3 or self.clip_pixel_values.ndim != 5:
            raise ValueError(
                "IdentityInputs needs face_embeds (B, R, G) and clip_pixel_values (B, R, 3, S, S); "
                f"got {tuple(self.face_embeds.shape)} and {tuple(self.clip_pixel_values.shape)}."
            )
        if self.face_embeds.shape[:2] != self.clip_pixel_values.shape[:2]:
            raise ValueError(
                f"face_embeds {tuple(self.face_embeds.shape[:2])} and clip_pixel_values {tuple(self.clip_pixel_values.shape[:2])} "
                "disagree on (batch, references)."
            )

    @property
    def batch_size(self) -> int:
        return self.face_embeds.shape[0]

    def repeat(self, batch_size: int) -> IdentityInputs:
        """Broadcast a single identity over ``batch_size`` samples."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"identity has batch {self.batch_size} but {batch_size} prompts were given; pass 1 identity or one per prompt.")
        return IdentityInputs(
            self.face_embeds.expand(batch_size, -1, -1),
            self.clip_pixel_values.expand(batch_size, -1, -1, -1, -1),
        )


def prepare_identity_inputs(references: list[ReferenceFace], recognizer: FaceRecognizer, feature_extractor: CLIPImageProcessor) -> IdentityInputs:
    """Run the recogniser and CLIP preprocessing on R reference faces of ONE identity (B = 1)."""
    if not references:
        raise ValueError("At least one reference face is needed.")
    face_embeds = recognizer.embed([reference.recognizer_crop for reference in references]).float()
    pixels = feature_extractor(images=[reference.clip_crop for reference in references], return_tensors="pt").pixel_values
    return IdentityInputs(face_embeds=face_embeds[None], clip_pixel_values=pixels[None])


def identity_tokens(inputs: IdentityInputs, image_encoder: CLIPVisionModel, identity_encoder: IdentityEncoder, fusion: str = "mean") -> torch.Tensor:
    """(B, T, D) identity tokens: CLIP last hidden state + projections (see IdentityEncoder)."""
    batch, references = inputs.clip_pixel_values.shape[:2]
    pixels = inputs.clip_pixel_values.flatten(0, 1).to(device=image_encoder.device, dtype=image_encoder.dtype)
    clip_features = image_encoder(pixel_values=pixels).last_hidden_state
    clip_features = clip_features.unflatten(0, (batch, references))
    face_embeds = inputs.face_embeds.to(device=identity_encoder.device)
    return identity_encoder(face_embeds, clip_features, fusion=fusion)
