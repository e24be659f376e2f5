"""Prompt -> text embeddings for the frozen UNet's cross-attention."""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTokenizer


def encode_prompts(prompts: list[str], tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> torch.Tensor:
    """Tokenise to the tokenizer's full length (77 for CLIP) and return the last hidden state.

    Returns:
        (len(prompts), 77, D) embeddings in the text encoder's dtype, as SD 1.5 uses them.
    """
    tokens = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = text_encoder.device
    # CLIP's text model attends to padding; only configs that say otherwise get the mask.
    attention_mask = tokens.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    hidden = text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]
    return hidden.to(dtype=text_encoder.dtype)


def join_prompt(prompt: str, added_prompt: str = "") -> str:
    """``prompt`` with ``added_prompt`` appended as ", <added_prompt>" when it is not empty (the
    published script's ``--a_prompt``: ``prompt + ", " + a_prompt``)."""
    return f"{prompt}, {added_prompt}" if added_prompt != "" else prompt
