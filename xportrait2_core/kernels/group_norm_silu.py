"""``silu(group_norm(x))`` of the ResNet blocks, for NCHW or channels-last feature maps.

Eager, GroupNorm reads the map twice (statistics, then normalisation) and writes it, and SiLU
reads and writes it once more. Here one program per (sample, group) reads its elements twice
(statistics, then normalise + affine + SiLU) and writes once. Elements are addressed through
the strides, so a channels-last map is read channel-fastest (contiguous) and written in the
input's memory format.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _group_block(
    start, base, count, channels_per_group, pixels, stride_c, stride_p,
    CHANNELS_INNER: tl.constexpr, BLOCK: tl.constexpr,
):
    """Offsets of the group's elements ``start`` to ``start + BLOCK``, which of them are in the
    group, and their channel within it. Channels-last maps are walked channel-fastest, so that
    a block reads contiguous memory."""
    index = start + tl.arange(0, BLOCK)
    inside = index < count
    if CHANNELS_INNER:
        channel, pixel = index % channels_per_group, index // channels_per_group
    else:
        channel, pixel = index // pixels, index % pixels
    return base + channel * stride_c + pixel.to(tl.int64) * stride_p, inside, channel


@triton.jit
def _group_norm_silu_kernel(
    x_ptr, out_ptr, weight_ptr, bias_ptr,
    groups, channels_per_group, pixels, eps,
    stride_n, stride_c, stride_p,
    CHANNELS_INNER: tl.constexpr, BLOCK: tl.constexpr,
):
    sample = tl.program_id(0) // groups
    group = tl.program_id(0) % groups
    count = channels_per_group * pixels
    first_channel = group * channels_per_group
    base = sample.to(tl.int64) * stride_n + first_channel.to(tl.int64) * stride_c
    # Sums of x - shift (the group's first element): one pass without the cancellation of
    # E[x^2] - E[x]^2 when the mean is large against the spread.
    shift = tl.load(x_ptr + base).to(tl.float32)
    total = tl.zeros((BLOCK,), tl.float32)
    squares = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, count, BLOCK):
        offsets, inside, channel = _group_block(
            start, base, count, channels_per_group, pixels, stride_c, stride_p, CHANNELS_INNER, BLOCK
        )
        x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        x = tl.where(inside, x - shift, 0.0)
        total += x
        squares += x * x
    mean_shifted = tl.sum(total, axis=0) / count
    variance = tl.maximum(tl.sum(squares, axis=0) / count - mean_shifted * mean_shifted, 0.0)
    inverse_std = tl.rsqrt(variance + eps)
    mean = mean_shifted + shift
    for start in range(0, count, BLOCK):
        offsets, inside, channel = _group_block(
            start, base, count, channels_per_group, pixels, stride_c, stride_p, CHANNELS_INNER, BLOCK
        )
        x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        weight = tl.load(weight_ptr + first_channel + channel, mask=inside, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + first_channel + channel, mask=inside, other=0.0).to(tl.float32)
        y = (x - mean) * inverse_std * weight + bias
        y = y / (1.0 + tl.exp(-y))
        tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=inside)


def pixel_stride(x: torch.Tensor) -> int:
    """The stride of the flattened H*W axis, or 0 when H and W do not flatten to one axis."""
    _, _, height, width = x.shape
    if height == 1 or x.stride(2) == width * x.stride(3):
        return x.stride(3) if width > 1 else x.stride(2)
    return 0


def group_norm_silu(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``silu(group_norm(x, groups, weight, bias, eps))`` for (N, C, H, W) ``x`` whose H and W
    flatten to one axis (NCHW or channels-last); the output has x's strides."""
    samples, channels, height, width = x.shape
    stride_p = pixel_stride(x)
    if channels % groups or stride_p == 0:
        raise ValueError(f"group_norm_silu: {channels} channels in {groups} groups, strides {x.stride()}")
    out = torch.empty_like(x)
    if out.stride() != x.stride():
        raise ValueError(f"group_norm_silu: empty_like gave strides {out.stride()} for {x.stride()}")
    _group_norm_silu_kernel[(samples * groups,)](
        x, out, weight, bias,
        groups, channels // groups, height * width, eps,
        x.stride(0), x.stride(1), stride_p,
        CHANNELS_INNER=x.stride(1) == 1 and channels > 1, BLOCK=1024,
    )
    return out
