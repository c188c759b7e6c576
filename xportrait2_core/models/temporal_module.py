"""Temporal modules (``temporal_modules.j``, spec section 3.6): each pixel attends to itself
across the frames of the window (two self-attention blocks with a sinusoidal frame position,
then a feed-forward). The only place where frames exchange information."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .attention import Attention
from .attention_stack import TokenMapTransformer, sincos_table
from .operations import LayerFactory


class FramePositions(nn.Module):
    """``pe``: (1, max_frames, C) interleaved sin/cos of window-relative frame positions (persistent)."""

    def __init__(self, channels: int, max_frames: int, layers: LayerFactory):
        super().__init__()
        table = sincos_table(torch.arange(max_frames), channels, interleaved=True).float().unsqueeze(0)
        self.register_buffer("pe", table.to(device=layers.device, dtype=layers.dtype))

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """``sequences`` (..., f, C), any strides -> a new contiguous tensor with the positions added."""
        frames = sequences.shape[-2]
        if frames > self.pe.shape[1]:
            raise ValueError(f"a window of {frames} frames exceeds the temporal modules' {self.pe.shape[1]} positions")
        if torch.compiler.is_compiling():
            # Inductor gives an out= result the strides of the strided input (a later view then
            # fails); compiled code fuses the add and the copy by itself.
            return (sequences + self.pe[:, :frames]).contiguous()
        return torch.add(sequences, self.pe[:, :frames], out=sequences.new_empty(sequences.shape))


class TemporalAttention(Attention):
    def __init__(self, channels: int, heads: int, max_frames: int, layers: LayerFactory):
        super().__init__(channels, heads, channels // heads, layers)
        self.pos_encoder = FramePositions(channels, max_frames, layers)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """``x``: (B*f, tokens, C) -> (B, f, tokens, C), attention over the f frames of each
        (batch, token) pair.

        The frame/pixel transpositions ride on the position addition and on the caller's
        residual addition (a view is returned): no separate transposed copies."""
        per_pixel = rearrange(x, "(b f) d c -> b d f c", f=frames)
        sequences = self.pos_encoder(per_pixel)
        out = super().forward(sequences.flatten(0, 1))
        return rearrange(out.view(sequences.shape), "b d f c -> b f d c")


class TemporalModule(nn.Module):
    def __init__(self, channels: int, heads: int, max_frames: int, layers: LayerFactory):
        super().__init__()

        def temporal_attention() -> nn.Module:
            return TemporalAttention(channels, heads, max_frames, layers)

        self.temporal_transformer = TokenMapTransformer(channels, layers, temporal_attention)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """``x``: (B*f, C, H, W), batch-major frames of windows of ``frames`` frames."""
        return self.temporal_transformer(x, frames=frames)
