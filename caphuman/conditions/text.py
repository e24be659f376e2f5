"""Prompt -> text embeddings for the frozen UNet's cross-attention."""

from __future__ import annotations

import logging

import torch
from transformers import CLIPTextModel, CLIPTokenizer

logger = logging.getLogger(__name__)


def warn_if_truncated(prompts: list[str], tokenizer: CLIPTokenizer) -> list[str]:
    """Warn about each prompt longer than the text encoder reads (77 tokens for CLIP, start and
    end tokens included): the rest is cut off silently otherwise. Returns those prompts."""
    limit = tokenizer.model_max_length
    # verbose=False: transformers' own "sequence length is longer" line would repeat ours.
    lengths = [len(ids) for ids in tokenizer(list(prompts), truncation=False, verbose=False).input_ids]
    long = [prompt for prompt, length in zip(prompts, lengths, strict=True) if length > limit]
    for prompt, length in zip(prompts, lengths, strict=True):
        if length > limit:
            kept = tokenizer.decode(tokenizer(prompt, truncation=True, max_length=limit).input_ids[1:-1])
            logger.warning(
                "The prompt is %d tokens long but the text encoder reads only %d; everything after '...%s' is ignored.",
                length,
                limit,
                kept[-40:],
            )
    return long


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
