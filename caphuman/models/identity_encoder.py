"""Identity tokens: the global face embedding and the local CLIP features, projected and joined.

As published: the face-recognition embedding goes through Linear(embedding_dim -> 768) to ONE
token (``id_linear``); the CLIP ViT-L/14 last hidden state of the masked reference face
(257 x 1024) goes through Linear(1024 -> 768) (``img_linear``); the tokens are concatenated
local first, then global: (257 + 1) x 768.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from caphuman.config import REFERENCE_FUSIONS


class IdentityEncoder(ModelMixin, ConfigMixin):
    """The two trainable projections that turn frozen face features into identity tokens."""

    @register_to_config
    def __init__(self, face_embedding_dim: int = 512, clip_embedding_dim: int = 1024, cross_attention_dim: int = 768):
        super().__init__()
        self.local_projection = nn.Linear(clip_embedding_dim, cross_attention_dim)
        self.global_projection = nn.Linear(face_embedding_dim, cross_attention_dim)

    def forward(self, face_embeds: torch.Tensor, clip_features: torch.Tensor, fusion: str = "mean") -> torch.Tensor:
        """Project and join.

        Args:
            face_embeds: (B, R, G) global embeddings of R reference photos per sample.
            clip_features: (B, R, N, C) CLIP vision tokens of the same photos.
            fusion: "mean" averages the R photos' tokens, giving (B, N + 1, D); "concat" keeps
                every photo's local tokens and averages the global ones, giving (B, R * N + 1, D).
        Returns:
            (B, T, D) identity tokens, local tokens first, the global token last.
        """
        if face_embeds.ndim != 3 or clip_features.ndim != 4:
            raise ValueError(
                f"face_embeds must be (B, R, G) and clip_features (B, R, N, C); got {tuple(face_embeds.shape)} and {tuple(clip_features.shape)}."
            )
        if fusion not in REFERENCE_FUSIONS:
            raise ValueError(f"fusion must be one of {REFERENCE_FUSIONS}, got '{fusion}'.")
        dtype = self.global_projection.weight.dtype
        global_tokens = self.global_projection(face_embeds.to(dtype)).mean(dim=1, keepdim=True)
        local_tokens = self.local_projection(clip_features.to(dtype))
        if fusion == "mean":
            local_tokens = local_tokens.mean(dim=1)
        else:
            local_tokens = local_tokens.flatten(1, 2)
        return torch.cat([local_tokens, global_tokens], dim=1)
