"""The ``fast`` switch (``xportrait2 animate --fast``, the Loader's ``fast``): every fused kernel
of this package on, in one network, for as long as the network lives.

Off by default: the kernels round once where the eager code rounds after every operation, so the
output moves within fp16 rounding (each kernel is held to fp16 against fp32, relative L2 2.3e-3,
in ``tests/test_kernels.py``), and no GPU has timed them against the plain path yet
(``bench/gpu_session.py`` does).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch
from torch import nn

from .dispatch import interpreter_on, triton_installed
from .levers import fused_geglu, fused_group_norm_silu, fused_layout_layer_norm, fused_residual_layer_norm

logger = logging.getLogger(__name__)

FUSED_KERNELS = (fused_geglu, fused_residual_layer_norm, fused_layout_layer_norm, fused_group_norm_silu)
SWITCHED_ON = "_fast_kernels"  # the network's attribute holding the open levers


def why_fast_cannot_run(device: torch.device | str) -> Optional[str]:
    """None where the kernels run on ``device``; else the reason, as a user reads it."""
    device = torch.device(device)
    if device.type == "cpu" and interpreter_on() and triton_installed():
        return None  # Triton's interpreter: how the tests run the kernels without a GPU
    if device.type != "cuda":
        return f"the fused kernels run on a CUDA GPU, and this run is on the {device.type.upper()}"
    if not triton_installed():
        return "the fused kernels need Triton, which is not installed (pip install 'comfyui-xportrait2[kernels]')"
    return None


def switch_on_fast_kernels(network: nn.Module, device: torch.device | str) -> bool:
    """Every fused kernel on in ``network`` (for good), or one log line saying why not; whether
    they are on. A network switched on already stays as it is."""
    reason = why_fast_cannot_run(device)
    if reason is not None:
        logger.warning("fast: %s; running the plain kernels instead (the same video, at the plain speed)", reason)
        return False
    if SWITCHED_ON not in network.__dict__:
        levers = contextlib.ExitStack()
        for lever in FUSED_KERNELS:
            levers.enter_context(lever(network))
        network.__dict__[SWITCHED_ON] = levers
        logger.info("fast: the fused Triton kernels are on (GEGLU, residual + LayerNorm, temporal layout + "
                    "LayerNorm, GroupNorm + SiLU); the output moves within fp16 rounding")
    return True
