"""Residual addition + LayerNorm in one pass: ``x += residual; normed = layer_norm(x)``.

The eager stack adds an attention output into the token rows (one read of each, one write)
and the next LayerNorm reads the rows again to write its output. Here one program per row
loads the row and its residual, stores the sum and writes the normalised sum.

Rows are indexed (b, f, d) and channels are the contiguous last axis. The residual and the
output are addressed with their own (b, f, d) strides, so a transposed residual (the temporal
attention's frame/pixel output) and a transposed output (:mod:`.layout_layer_norm`) need no
copy. Frame positions, when given, are added to the normalised row of frame ``f``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _residual_layer_norm_kernel(
    x_ptr, residual_ptr, out_ptr, weight_ptr, bias_ptr, positions_ptr,
    frames, tokens, width, eps,
    residual_stride_b, residual_stride_f, residual_stride_d,
    out_stride_b, out_stride_f, out_stride_d,
    HAS_RESIDUAL: tl.constexpr, HAS_POSITIONS: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // (frames * tokens)
    f = (row // tokens) % frames
    d = row % tokens
    columns = tl.arange(0, BLOCK)
    inside = columns < width
    x_ptrs = x_ptr + row * width + columns
    x = tl.load(x_ptrs, mask=inside, other=0.0)
    if HAS_RESIDUAL:
        residual_ptrs = residual_ptr + b * residual_stride_b + f * residual_stride_f + d * residual_stride_d + columns
        residual = tl.load(residual_ptrs, mask=inside, other=0.0)
        # The sum is rounded to x's dtype before it is normalised, as the eager code stores it
        # in x and the norm reads it back.
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(x_ptrs, x, mask=inside)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=0) / width
    centred = tl.where(inside, x - mean, 0.0)
    variance = tl.sum(centred * centred, axis=0) / width
    weight = tl.load(weight_ptr + columns, mask=inside, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + columns, mask=inside, other=0.0).to(tl.float32)
    normed = centred * tl.rsqrt(variance + eps) * weight + bias
    if HAS_POSITIONS:
        normed += tl.load(positions_ptr + f * width + columns, mask=inside, other=0.0).to(tl.float32)
    out_ptrs = out_ptr + b * out_stride_b + f * out_stride_f + d * out_stride_d + columns
    tl.store(out_ptrs, normed.to(out_ptr.dtype.element_ty), mask=inside)


def layer_norm_rows(
    x: torch.Tensor,
    residual: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    out: torch.Tensor,
    positions: Optional[torch.Tensor] = None,
) -> None:
    """The kernel on (B, F, D, C) tensors: ``x`` contiguous (summed in place when ``residual``
    is given), ``residual`` and ``out`` any strides with contiguous channels, ``positions``
    (F, C) contiguous."""
    width = x.shape[-1]
    for name, tensor in (("x", x), ("residual", residual), ("out", out)):
        if tensor is not None and (tensor.dim() != 4 or tensor.shape != x.shape or tensor.stride(-1) != 1):
            raise ValueError(f"{name}: expected (B, F, D, C) like x {tuple(x.shape)} with contiguous channels")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous (its sum is stored in place)")
    _, frames, tokens, _ = x.shape
    residual_strides = residual.stride()[:3] if residual is not None else (0, 0, 0)
    _residual_layer_norm_kernel[(x.numel() // width,)](
        x, x if residual is None else residual, out, weight, bias, x if positions is None else positions,
        frames, tokens, width, eps,
        *residual_strides, *out.stride()[:3],
        HAS_RESIDUAL=residual is not None, HAS_POSITIONS=positions is not None,
        BLOCK=triton.next_power_of_2(width),
    )


def as_rows4(tensor: torch.Tensor) -> torch.Tensor:
    """(..., C) as (B, F, D, C) without copying: leading size-1 axes where there are fewer."""
    while tensor.dim() < 4:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() > 4:
        tensor = tensor.flatten(0, tensor.dim() - 4)
    return tensor


def residual_layer_norm_(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """``x.view(residual.shape) += residual`` in place on contiguous ``x``; returns
    ``layer_norm(x)`` (a new contiguous tensor of x's shape)."""
    residual4 = as_rows4(residual)
    x4 = x.view(residual4.shape)
    normed = torch.empty_like(x4, memory_format=torch.contiguous_format)
    layer_norm_rows(x4, residual4, weight, bias, eps, normed)
    return normed.view(x.shape)
