"""The pre-norm attention stack shared by the motion encoder's patch attention and the
denoiser's motion and temporal modules: ``norms.k`` + ``attention_blocks.k`` residual pairs,
then ``ff_norm`` + ``ff``."""

from __future__ import annotations

from typing import Callable

import torch
from einops import rearrange
from torch import nn

from .attention import FeedForward
from .operations import LayerFactory


class AttentionStack(nn.Module):
    def __init__(
        self,
        dim: int,
        layers: LayerFactory,
        make_attention: Callable[[], nn.Module],
        num_attention_blocks: int,
    ):
        super().__init__()
        self.attention_blocks = nn.ModuleList([make_attention() for _ in range(num_attention_blocks)])
        self.norms = nn.ModuleList([layers.layer_norm(dim) for _ in range(num_attention_blocks)])
        self.ff = FeedForward(dim, layers)
        self.ff_norm = layers.layer_norm(dim)

    def forward(self, x: torch.Tensor, **attention_kwargs) -> torch.Tensor:
        """``x``: contiguous tokens that the caller owns; the residuals are added to it in place."""
        for attention, norm in zip(self.attention_blocks, self.norms):
            attention.add_to(x, norm(x), **attention_kwargs)
        return self.ff.add_to(x, self.ff_norm)


def sincos_table(positions: torch.Tensor, dim: int, interleaved: bool) -> torch.Tensor:
    """Sinusoidal encodings of ``positions`` (float64 math), frequencies 10000^(-k/(dim/2)).

    ``interleaved``: sin and cos alternate (temporal modules); otherwise all sines, then all
    cosines (motion-encoder tables)."""
    half = dim // 2
    omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    if interleaved:
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TokenMapTransformer(nn.Module):
    """An :class:`AttentionStack` applied to the pixels of a feature map as tokens.

    GroupNorm (32 groups) -> ``proj_in`` -> stack -> ``proj_out``, added to the input. This is
    ``temporal_transformer`` of the denoiser's motion and temporal modules."""

    def __init__(self, channels: int, layers: LayerFactory, make_attention: Callable[[], nn.Module]):
        super().__init__()
        self.norm = layers.group_norm(32, channels, eps=1e-6)
        self.proj_in = layers.linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([AttentionStack(channels, layers, make_attention, 2)])
        self.proj_out = layers.linear(channels, channels)

    def forward(self, x: torch.Tensor, **attention_kwargs) -> torch.Tensor:
        """Adds to ``x`` in place (the level passes the feature map it owns)."""
        height, width = x.shape[-2:]
        tokens = self.proj_in(rearrange(self.norm(x), "n c h w -> n (h w) c"))
        for block in self.transformer_blocks:
            tokens = block(tokens, **attention_kwargs)
        return x.add_(rearrange(self.proj_out(tokens), "n (h w) c -> n c h w", h=height, w=width))
