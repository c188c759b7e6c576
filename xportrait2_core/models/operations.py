"""Where every layer and every attention call of the engine comes from.

The networks never instantiate ``torch.nn`` layers directly: they ask a :class:`LayerFactory`,
which builds them from an injected ``operations`` namespace (anything with ``Linear``,
``Conv2d``, ``GroupNorm``, ``LayerNorm`` and optionally ``BatchNorm2d`` classes that accept
``dtype``/``device`` keywords, e.g. ``torch.nn`` or ComfyUI's ``comfy.ops`` classes) and runs
attention through an injected callable with ComfyUI's ``optimized_attention`` signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on ``(batch, tokens, heads * head_dim)`` tensors, scale 1/sqrt(head_dim)."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "b h n d -> b n (h d)")


torch_operations = SimpleNamespace(
    Linear=nn.Linear,
    Conv2d=nn.Conv2d,
    GroupNorm=nn.GroupNorm,
    LayerNorm=nn.LayerNorm,
    BatchNorm2d=nn.BatchNorm2d,
)


@dataclass(frozen=True)
class LayerFactory:
    """Builds layers from ``operations`` with one dtype/device, and carries the attention function."""

    operations: Any = field(default_factory=lambda: torch_operations)
    attention: AttentionFn = sdpa_attention
    dtype: Optional[torch.dtype] = None
    device: Optional[torch.device | str] = None

    def _placed(self, kwargs: dict) -> dict:
        return {"dtype": self.dtype, "device": self.device, **kwargs}

    def linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        return self.operations.Linear(in_features, out_features, bias=bias, **self._placed({}))

    def conv2d(self, in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> nn.Module:
        return self.operations.Conv2d(in_channels, out_channels, kernel_size, **self._placed(kwargs))

    def group_norm(self, num_groups: int, num_channels: int, eps: float) -> nn.Module:
        return self.operations.GroupNorm(num_groups, num_channels, eps=eps, affine=True, **self._placed({}))

    def layer_norm(self, dim: int, eps: float = 1e-5) -> nn.Module:
        return self.operations.LayerNorm(dim, eps=eps, **self._placed({}))

    def batch_norm(self, num_features: int) -> nn.Module:
        # ComfyUI's ops namespaces have no BatchNorm; the motion encoder then uses torch's.
        cls = getattr(self.operations, "BatchNorm2d", nn.BatchNorm2d)
        return cls(num_features, **self._placed({}))


class _NoInit:
    """Mixin: leave parameters uninitialised (they are about to be overwritten by a checkpoint)."""

    def reset_parameters(self) -> None:
        return None


skip_init_operations = SimpleNamespace(
    Linear=type("Linear", (_NoInit, nn.Linear), {}),
    Conv2d=type("Conv2d", (_NoInit, nn.Conv2d), {}),
    GroupNorm=type("GroupNorm", (_NoInit, nn.GroupNorm), {}),
    LayerNorm=type("LayerNorm", (_NoInit, nn.LayerNorm), {}),
    BatchNorm2d=type("BatchNorm2d", (_NoInit, nn.BatchNorm2d), {}),
)
