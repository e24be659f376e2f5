"""CLIP-T score and prompt accuracy, with CLIP ViT-L/14 when its full (text + vision) model is present.

- CLIP-T of an image = max(100 * cos(image embedding, prompt embedding), 0), the convention of
  torchmetrics' CLIPScore and of the CLIP-T columns in PhotoMaker/FastComposer-style tables.
  The whole generated image is scored against the prompt actually used (subject word filled in).
- Prompt accuracy (this project's definition; the paper's own definition is not in this
  repository's notes, so treat it as ours): an image is correct when, among all of the
  benchmark's prompts rendered for the same identity, CLIP ranks its own prompt first. Chance
  level is 1 / number of prompts. It is only defined with a CLIP model; without one the column
  reads n/a.

The default model folder is the one the pipeline uses for local identity features
(``checkpoints/clip-vit-large-patch14``, a transformers CLIPModel folder from
openai/clip-vit-large-patch14); a folder that holds only the vision tower cannot score text, so
CLIP metrics are skipped with a note.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from caphuman.weights.registry import weights_entry

logger = logging.getLogger(__name__)


@dataclass
class ClipAvailability:
    """Whether CLIP metrics run, and the sentence the report shows either way."""

    scorer: ClipScorer | None
    note: str


class ClipScorer:
    """Unit-norm CLIP embeddings of images and texts (a transformers CLIPModel).

    Args:
        model: a ``transformers.CLIPModel`` (text and vision towers).
        tokenizer: its tokenizer; image_processor: its ``CLIPImageProcessor``.
        device: where the model runs.
    """

    def __init__(self, model, tokenizer, image_processor, device: torch.device | str = "cpu", batch_size: int = 32):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.batch_size = batch_size

    @classmethod
    def from_dir(cls, folder: str | Path, device: torch.device | str = "cpu") -> ClipAvailability:
        """Load a CLIPModel folder; a missing folder or a vision-only model gives ``scorer=None`` and a note."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            return ClipAvailability(None, f"CLIP-T and prompt accuracy skipped: no CLIP model at {folder} ({weights_entry('clip_vision').hf_repo}).")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.get("model_type") != "clip" or "text_config" not in config:
            return ClipAvailability(
                None,
                f"CLIP-T and prompt accuracy skipped: {folder} holds a vision-only model; "
                f"scoring text needs the full {weights_entry('clip_vision').hf_repo}.",
            )
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        model = CLIPModel.from_pretrained(folder)
        scorer = cls(model, CLIPTokenizer.from_pretrained(folder), CLIPImageProcessor.from_pretrained(folder), device)
        name = config.get("_name_or_path") or folder.name
        return ClipAvailability(scorer, f"CLIP-T and prompt accuracy with {name} ({folder}).")

    @torch.inference_mode()
    def embed_images(self, images: list[Image.Image | np.ndarray]) -> np.ndarray:
        """(N, D) float64 unit vectors for RGB images."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = [Image.fromarray(i) if isinstance(i, np.ndarray) else i.convert("RGB") for i in images[start : start + self.batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device, self.model.dtype)
            chunks.append(_features(self.model.get_image_features(pixel_values=pixels)))
        return _unit(np.concatenate(chunks)) if chunks else np.zeros((0, 0))

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N, D) float64 unit vectors for prompts (truncated to CLIP's 77 tokens)."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                texts[start : start + self.batch_size],
                padding="max_length",
                truncation=True,
                max_length=self.tokenizer.model_max_length,
                return_tensors="pt",
            ).to(self.device)
            chunks.append(_features(self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])))
        return _unit(np.concatenate(chunks)) if chunks else np.zeros((0, 0))


def _features(output) -> np.ndarray:
    # transformers 5 may return a model output instead of a tensor from get_*_features.
    tensor = output if isinstance(output, torch.Tensor) else getattr(output, "pooler_output", output[0])
    return tensor.float().cpu().numpy().astype(np.float64)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def clip_t_scores(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """(N,) max(100 * cos, 0) of row-aligned (N, D) image and text embeddings."""
    image_embeds, text_embeds = _unit(np.asarray(image_embeds, np.float64)), _unit(np.asarray(text_embeds, np.float64))
    return np.maximum(100.0 * np.sum(image_embeds * text_embeds, axis=-1), 0.0)


def prompt_hits(image_embeds: np.ndarray, prompt_embeds: np.ndarray, correct: np.ndarray | list[int]) -> np.ndarray:
    """(N,) bool: image i's most similar prompt (rows of (P, D) ``prompt_embeds``) is ``correct[i]``."""
    similarities = _unit(np.asarray(image_embeds, np.float64)) @ _unit(np.asarray(prompt_embeds, np.float64)).T
    return np.argmax(similarities, axis=1) == np.asarray(correct)


__all__ = ["ClipAvailability", "ClipScorer", "clip_t_scores", "prompt_hits"]
