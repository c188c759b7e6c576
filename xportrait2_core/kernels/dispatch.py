"""Whether a tensor can go through a Triton kernel here, decided without importing triton."""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from typing import Optional

import torch
from torch import nn


@cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    """Triton's interpreter runs kernels on CPU tensors; it must be chosen before triton is
    first imported, so only the environment variable counts."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_can_run(tensor: torch.Tensor) -> bool:
    if not triton_installed():
        return False
    if tensor.device.type == "cuda":
        return not interpreter_on()
    return tensor.device.type == "cpu" and interpreter_on()


def plain_norm_parameters(norm: nn.Module, x: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The norm's weight and bias if a kernel may read them as they are (on ``x``'s device, not
    cast per call by ComfyUI's ops), else None: the caller then runs the norm itself."""
    if getattr(norm, "comfy_cast_weights", False):
        return None
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    if weight is None or bias is None or weight.device != x.device or bias.device != x.device:
        return None
    return weight, bias
