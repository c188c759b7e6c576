"""Motion modules (``motion_modules.j``, spec section 3.5): every pixel of a frame attends to the
32 motion tokens of that same frame (two cross-attention blocks, then a feed-forward).

This is where the driving expression enters the denoiser; the tokens carry no identity."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .attention import Attention
from .attention_stack import TokenMapTransformer
from .operations import LayerFactory


class MotionModule(nn.Module):
    def __init__(self, channels: int, heads: int, token_dim: int, layers: LayerFactory):
        super().__init__()

        def motion_cross_attention() -> nn.Module:
            return Attention(channels, heads, channels // heads, layers, context_dim=token_dim)

        self.temporal_transformer = TokenMapTransformer(channels, layers, motion_cross_attention)

    def forward(self, x: torch.Tensor, motion_tokens: torch.Tensor) -> torch.Tensor:
        """``x``: (B*f, C, H, W) frames; ``motion_tokens``: (B*f, 32, token_dim) in the same order."""
        if motion_tokens.shape[0] != x.shape[0]:
            raise ValueError(
                f"motion tokens for {motion_tokens.shape[0]} frames, feature maps for {x.shape[0]}"
            )
        return self.temporal_transformer(x, context=motion_tokens)


def fold_motion_tokens(motion_tokens: torch.Tensor) -> torch.Tensor:
    """(B, f, 32, d) -> (B*f, 32, d), batch-major like the frames."""
    return rearrange(motion_tokens, "b f l d -> (b f) l d")
