"""Multi-head attention and the GEGLU feed-forward, with diffusers' parameter names.

Every transformer-like block of the three networks (motion encoder patch attention, the UNets'
spatial transformers, the motion and temporal modules) is made of these two pieces.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .operations import LayerFactory


class Attention(nn.Module):
    """``to_q``/``to_k``/``to_v`` (no bias) and ``to_out.0`` (with bias); ``heads`` heads of ``head_dim``."""

    def __init__(
        self,
        query_dim: int,
        heads: int,
        head_dim: int,
        layers: LayerFactory,
        context_dim: Optional[int] = None,
    ):
        super().__init__()
        inner_dim = heads * head_dim
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.attention = layers.attention
        self.to_q = layers.linear(query_dim, inner_dim, bias=False)
        self.to_k = layers.linear(context_dim, inner_dim, bias=False)
        self.to_v = layers.linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.ModuleList([layers.linear(inner_dim, query_dim)])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of already projected queries/keys/values, then the output projection."""
        return self.to_out[0](self.attention(q, k, v, self.heads))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        return self.attend(self.to_q(x), self.to_k(context), self.to_v(context))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, layers: LayerFactory):
        super().__init__()
        self.proj = layers.linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """``net.0`` = GEGLU to ``mult * dim``, ``net.2`` = projection back (``net.1`` is a no-op dropout)."""

    def __init__(self, dim: int, layers: LayerFactory, mult: int = 4):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner_dim, layers), nn.Identity(), layers.linear(inner_dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x
