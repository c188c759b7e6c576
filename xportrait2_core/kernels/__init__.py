"""Fused Triton kernels for the denoiser's memory-bound glue (issue 26), each an opt-in lever.

Nothing here runs unless a lever is switched on (:mod:`.levers`): the default path never
imports triton. A lever only swaps the ``forward`` of the modules it fuses, for as long as its
context manager is open, and every fused forward falls back to the eager code for a tensor that
Triton cannot run (no triton installed, or a CPU tensor without ``TRITON_INTERPRET=1``).

One module per kernel:

- :mod:`.geglu`: ``value * gelu_erf(gate)`` over the two halves of the GEGLU projection.
- :mod:`.residual_layer_norm`: ``x += residual; normed = layer_norm(x)`` in one pass (the
  residual may be a strided view, e.g. the temporal attention's frame/pixel-transposed output).
- :mod:`.layout_layer_norm`: the temporal modules' LayerNorm reading ``(b f) d c`` tokens and
  writing ``(b d) f c`` frame sequences with the frame positions added (same kernel as the
  residual one, with a strided output).
- :mod:`.group_norm_silu`: ``silu(group_norm(x))`` for NCHW or channels-last feature maps.

:mod:`.fast` switches all four on for a network's life: what users reach through ``--fast`` and
the Loader's ``fast``.
"""

from .dispatch import triton_can_run
from .fast import switch_on_fast_kernels, why_fast_cannot_run
from .levers import (
    fused_geglu,
    fused_group_norm_silu,
    fused_layout_layer_norm,
    fused_residual_layer_norm,
)

__all__ = [
    "fused_geglu",
    "fused_group_norm_silu",
    "fused_layout_layer_norm",
    "fused_residual_layer_norm",
    "switch_on_fast_kernels",
    "triton_can_run",
    "why_fast_cannot_run",
]
