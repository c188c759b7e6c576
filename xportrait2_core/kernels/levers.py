"""Switches for the kernels: context managers that swap the ``forward`` of the modules a kernel
fuses, inside one network, and restore them on exit.

The fused forwards import the kernel modules (and so triton) only when a tensor can run
through Triton; otherwise, or when a norm's parameters are not plain tensors on the input's
device (ComfyUI's casting ops), they run the eager forward of the class.
"""

from __future__ import annotations

import contextlib
import types
from typing import Callable, ContextManager, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..models.attention import GEGLU, Attention
from ..models.attention_stack import AttentionStack
from ..models.temporal_module import TemporalAttention
from ..models.unet_blocks import ResnetBlock
from .dispatch import plain_norm_parameters, triton_can_run


@contextlib.contextmanager
def swapped_forward(network: nn.Module, kind: type, forward: Callable) -> Iterator[None]:
    """Every ``kind`` module of ``network`` runs ``forward`` (bound to it) until the exit."""
    modules = [m for m in network.modules() if isinstance(m, kind)]
    for module in modules:
        if "forward" in module.__dict__:
            raise RuntimeError(f"{type(module).__name__} already has a swapped forward (another lever?)")
        module.forward = types.MethodType(forward, module)
    try:
        yield
    finally:
        for module in modules:
            del module.forward


def geglu_forward(self: GEGLU, x: torch.Tensor) -> torch.Tensor:
    if not triton_can_run(x):
        return GEGLU.forward(self, x)
    projected = self.proj(x)
    if not projected.is_contiguous():
        half = projected.shape[-1] // 2
        return projected[..., :half].mul_(F.gelu(projected[..., half:]))
    from .geglu import gelu_gate_product_

    return gelu_gate_product_(projected)


def fused_geglu(network: nn.Module) -> ContextManager:
    """GEGLU's ``value * gelu_erf(gate)`` in one Triton pass (the projection GEMM unchanged)."""
    return swapped_forward(network, GEGLU, geglu_forward)


def norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    parameters = plain_norm_parameters(norm, x)
    if parameters is None or not isinstance(norm, nn.GroupNorm):
        return F.silu(norm(x), inplace=True)
    from .group_norm_silu import group_norm_silu, pixel_stride

    if x.shape[1] % norm.num_groups or pixel_stride(x) == 0:
        return F.silu(norm(x), inplace=True)
    return group_norm_silu(x, norm.num_groups, *parameters, norm.eps)


def resnet_forward(self: ResnetBlock, x: torch.Tensor, batch) -> torch.Tensor:
    if not triton_can_run(x):
        return ResnetBlock.forward(self, x, batch)
    # ResnetBlock.forward with each GroupNorm + SiLU pair as one kernel.
    h = self.conv1(norm_silu(self.norm1, x))
    h += self.time_emb_proj(F.silu(batch.time_embedding))[:, :, None, None]
    h = self.conv2(norm_silu(self.norm2, h))
    h += x if self.conv_shortcut is None else self.conv_shortcut(x)
    return h


def fused_group_norm_silu(network: nn.Module) -> ContextManager:
    """The ResNet blocks' ``silu(group_norm(x))`` pairs in one Triton pass each (NCHW or
    channels-last)."""
    return swapped_forward(network, ResnetBlock, resnet_forward)


# AttentionStack fusions: the residual one and the layout one share the stack's forward, so
# each lever adds its name to the stack's set and the swapped forward does what the set says.
RESIDUAL, LAYOUT = "residual + LayerNorm", "layout + LayerNorm"


def stack_forward(self: AttentionStack, x: torch.Tensor, **attention_kwargs) -> torch.Tensor:
    norms = list(self.norms) + [self.ff_norm]
    width = x.shape[-1]
    parameters = [plain_norm_parameters(norm, x) for norm in norms]
    runnable = (
        triton_can_run(x)
        and x.is_contiguous()
        and all(p is not None for p in parameters)
        and all(isinstance(n, nn.LayerNorm) and tuple(n.normalized_shape) == (width,) for n in norms)
    )
    if not runnable:
        return AttentionStack.forward(self, x, **attention_kwargs)
    from .layout_layer_norm import frames_to_pixels_layer_norm
    from .residual_layer_norm import residual_layer_norm_

    attentions = list(self.attention_blocks)
    frames = attention_kwargs.get("frames")
    to_sequences = (
        LAYOUT in self._kernel_fusions and frames is not None and all(isinstance(a, TemporalAttention) for a in attentions)
    )
    add_in_kernel = RESIDUAL in self._kernel_fusions

    def normalise(index: int, residual) -> torch.Tensor:
        """The input of block ``index`` (attention blocks, then the feed-forward), after
        ``residual`` (the previous block's output, or None) is added to ``x``."""
        norm, (weight, bias) = norms[index], parameters[index]
        if residual is not None and not add_in_kernel:
            x.view(residual.shape).add_(residual)
            residual = None
        if to_sequences and index < len(attentions):
            positions = attentions[index].pos_encoder.pe[0]
            if frames > positions.shape[0]:
                raise ValueError(f"a window of {frames} frames exceeds the temporal modules' {positions.shape[0]} positions")
            return frames_to_pixels_layer_norm(x, frames, weight, bias, norm.eps, positions[:frames], residual)
        if residual is not None:
            return residual_layer_norm_(x, residual, weight, bias, norm.eps)
        return norm(x)

    normed = normalise(0, None)
    for index, attention in enumerate(attentions):
        if to_sequences:
            # TemporalAttention.forward after its position addition, which the norm has done;
            # the output is left as a (b, f, d, c) view of (b d) f c memory for the next norm.
            out = Attention.forward(attention, normed)
            out = out.view(-1, x.shape[1], frames, width).transpose(1, 2)
        else:
            out = attention(normed, **attention_kwargs)
        normed = normalise(index + 1, out)
    x.view(-1, width).add_(self.ff(normed.view(-1, width)))
    return x


@contextlib.contextmanager
def stack_fusion(network: nn.Module, fusion: str) -> Iterator[None]:
    stacks = [m for m in network.modules() if isinstance(m, AttentionStack)]
    for stack in stacks:
        fusions = stack.__dict__.setdefault("_kernel_fusions", set())
        if not fusions:
            stack.forward = types.MethodType(stack_forward, stack)
        fusions.add(fusion)
    try:
        yield
    finally:
        for stack in stacks:
            stack._kernel_fusions.discard(fusion)
            if not stack._kernel_fusions:
                del stack._kernel_fusions, stack.forward


def fused_residual_layer_norm(network: nn.Module) -> ContextManager:
    """In every attention stack (motion and temporal modules, motion encoder), each residual
    addition and the LayerNorm after it in one Triton pass."""
    return stack_fusion(network, RESIDUAL)


def fused_layout_layer_norm(network: nn.Module) -> ContextManager:
    """In the temporal modules, each attention block's LayerNorm writes the per-pixel frame
    sequences (positions added) directly, without the separate transposed copy."""
    return stack_fusion(network, LAYOUT)
