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

    def add_to(self, x: torch.Tensor, normed: torch.Tensor, **kwargs) -> torch.Tensor:
        """The residual ``x += self(normed, **kwargs)``, in place on contiguous ``x``. The output
        may split an axis of ``x`` (the temporal attention returns frames and pixels apart)."""
        out = self(normed, **kwargs)
        x.view(out.shape).add_(out)
        return x


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, layers: LayerFactory):
        super().__init__()
        self.proj = layers.linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The product is written into the value half of the projection: one (tokens, dim_out)
        # tensor fewer to allocate and fill, and the next linear reads the strided half as is.
        projected = self.proj(x)
        half = projected.shape[-1] // 2
        return projected[..., :half].mul_(F.gelu(projected[..., half:]))


# On the CPU the residual feed-forward runs over blocks of this many token rows: the block's
# (rows, 8 * dim) projection stays in cache and its memory is reused, where a whole-map one would
# be freshly mapped (page faults) at every call and cost as much as the matmul. Other devices
# run it in one piece (fewest kernel launches).
CPU_ROW_BLOCK = 4096


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

    def add_to(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        """The pre-norm residual ``x += self(norm(x))``, in place on contiguous tokens ``x``."""
        rows = x.view(-1, x.shape[-1])
        block = CPU_ROW_BLOCK if x.device.type == "cpu" else max(len(rows), 1)
        for start in range(0, len(rows), block):
            part = rows[start : start + block]
            part += self(norm(part))
        return x
