"""GEGLU epilogue: ``value * gelu(gate)`` (exact erf GELU) over the projection's two halves.

Only the elementwise part is fused: the projection itself stays torch's GEMM. The eager code
makes ``gelu(gate)`` as a new tensor and multiplies it into the value half; here each element
of the value half is read with its gate and overwritten once, computed in float32 and rounded
once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

INVERSE_SQRT_2 = 0.7071067811865476


@triton.jit
def _gelu_gate_product_kernel(projected_ptr, row_stride, half, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = columns < half
    value_ptrs = projected_ptr + row.to(tl.int64) * row_stride + columns
    value = tl.load(value_ptrs, mask=inside, other=0.0).to(tl.float32)
    gate = tl.load(value_ptrs + half, mask=inside, other=0.0).to(tl.float32)
    gelu = 0.5 * gate * (1.0 + tl.erf(gate * INVERSE_SQRT_2))
    tl.store(value_ptrs, (value * gelu).to(projected_ptr.dtype.element_ty), mask=inside)


def gelu_gate_product_(projected: torch.Tensor) -> torch.Tensor:
    """``projected[..., :half] *= gelu(projected[..., half:])`` in place; returns that half (a
    strided view, as the eager GEGLU does). ``projected`` must have contiguous rows."""
    width = projected.shape[-1]
    half = width // 2
    rows = projected.view(-1, width)
    block = min(triton.next_power_of_2(half), 1024)
    _gelu_gate_product_kernel[(rows.shape[0], triton.cdiv(half, block))](rows, rows.stride(0), half, BLOCK=block)
    return projected[..., :half]
