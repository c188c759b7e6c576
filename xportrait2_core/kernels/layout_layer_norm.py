"""The temporal modules' LayerNorm with the frame/pixel transposition folded in.

Eager, each temporal attention block reads the ``(b f) d c`` tokens in a LayerNorm (writing
normalised tokens), then ``TemporalAttention`` reads those again to add the frame positions
into a new ``(b d) f c`` tensor of per-pixel frame sequences. Here the LayerNorm writes the
sequences directly, positions added: one full read and write of the feature tokens fewer.
With ``residual`` the previous block's output (``(b f) d c``-shaped view of ``(b d) f c``
memory) is added to the tokens in the same pass, so the layout goes back without a copy too.

The kernel is :mod:`.residual_layer_norm`'s, given a transposed output.
"""

from __future__ import annotations

from typing import Optional

import torch

from .residual_layer_norm import layer_norm_rows


def frames_to_pixels_layer_norm(
    x: torch.Tensor,
    frames: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    positions: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``x``: contiguous (B*f, D, C) tokens (``residual``, (B, f, D, C) any strides, is first
    added to it in place). Returns ``layer_norm(x)`` rearranged to (B*D, f, C) with
    ``positions`` (f, C) added to every frame sequence."""
    batch_frames, tokens, width = x.shape
    if batch_frames % frames:
        raise ValueError(f"{batch_frames} token maps are not whole windows of {frames} frames")
    x4 = x.view(batch_frames // frames, frames, tokens, width)
    sequences = x.new_empty((batch_frames // frames, tokens, frames, width))
    layer_norm_rows(x4, residual, weight, bias, eps, sequences.transpose(1, 2), positions.contiguous())
    return sequences.view(-1, frames, width)
