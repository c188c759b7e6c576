"""Fitting a run on an 8 GB card (issue 26): what stays on the GPU when, and how guidance is batched.

Two levers, both with the same output:

* **Offload.** The reference UNet (once per clip) and the motion encoder (all frames, before
  sampling) are done before the sampling loop starts; they go to host memory rather than being
  freed, so that the next clip of a batch or of a Ray farm worker brings them back with a copy
  instead of a load from disk. On by default on CUDA; on the CPU there is nothing to move.
* **Guidance in sequence.** The denoiser runs the unconditional and the conditional branch as two
  batch-1 calls instead of one batch-2 call when free device memory is short, which halves the
  activations of a call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

logger = logging.getLogger(__name__)

# Peak activations of one denoiser call, in elements per guidance branch, frame and latent pixel.
# From the H200 measurement of bench/README.md (fp16, 512x512, 24-frame windows): 7.65 GiB peak
# less 4.89 GiB of weights for a 2-branch, 24-frame, 64x64 window is about 7,400 elements; rounded
# up because the estimate only has to tell a call that fits from one that does not.
CALL_ELEMENTS_PER_LATENT_PIXEL = 8000
# The allocator needs room beyond the estimate: fragmentation, and the blocks a call frees late.
FREE_MEMORY_MARGIN = 1.25


@dataclass(frozen=True)
class LowVramSettings:
    """``None`` is automatic: offload on CUDA; guidance in sequence when free memory is short."""

    offload: Optional[bool] = None
    guidance_in_sequence: Optional[bool] = None


def offloads(setting: Optional[bool], device: torch.device) -> bool:
    """Whether the networks used before sampling go to host memory after use."""
    return torch.device(device).type == "cuda" if setting is None else setting


def describe(settings: LowVramSettings, offload: bool) -> str:
    """One log line: what this run does with its memory."""
    guidance = {None: "when free memory is short", True: "always", False: "never"}[settings.guidance_in_sequence]
    parked = "moved to host memory after use" if offload else "kept on the device"
    return f"reference UNet and motion encoder {parked}; guidance branches in sequence {guidance}"


def denoiser_call_bytes(branches: int, frames: int, height: int, width: int, dtype: torch.dtype) -> int:
    """Estimated activation memory of one denoiser call on a (branches, 4, frames, height, width) batch."""
    element_size = torch.empty((), dtype=dtype).element_size()
    return branches * frames * height * width * CALL_ELEMENTS_PER_LATENT_PIXEL * element_size


def memory_is_short(available_bytes: Optional[int], doubled_call_bytes: int) -> bool:
    """Whether a call with both guidance branches in one batch would not fit comfortably;
    ``available_bytes`` None (not a CUDA device) means no limit is known: not short."""
    return available_bytes is not None and available_bytes < FREE_MEMORY_MARGIN * doubled_call_bytes


def available_device_bytes(device: torch.device) -> Optional[int]:
    """Memory a new allocation on ``device`` can get: the driver's free memory plus what PyTorch's
    caching allocator holds unused; None off CUDA (the CPU's memory is not the constraint here)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def runs_guidance_in_sequence(
    setting: Optional[bool], device: torch.device, frames: int, height: int, width: int, dtype: torch.dtype
) -> bool:
    """The setting if given, else whether memory is short for a doubled call on ``frames``-frame
    windows of ``height`` x ``width`` latents; logged, since it changes speed and memory."""
    if setting is not None:
        return setting
    doubled = denoiser_call_bytes(2, frames, height, width, dtype)
    available = available_device_bytes(device)
    in_sequence = memory_is_short(available, doubled)
    if in_sequence:
        logger.info(
            "low VRAM: %.2f GiB free for a guided denoiser call of about %.2f GiB: "
            "running the unconditional and conditional branches one after the other",
            available / 2**30, doubled / 2**30,
        )
    return in_sequence


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


class Residency:
    """Moves a network to the compute device when it is needed and, when ``offload`` is on, to
    ``host`` once it is done. ``moves`` records (network name, device) of each move, for the logs'
    reader and for tests."""

    def __init__(self, compute: torch.device, offload: bool, host: torch.device = torch.device("cpu")):
        self.compute = torch.device(compute)
        self.offload = offload
        self.host = torch.device(host)
        self.moves: list[tuple[str, torch.device]] = []

    def fetch(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        if next(module.parameters()).device != self.compute:
            self._move(name, module, self.compute)
        return module

    def park(self, name: str, module: torch.nn.Module) -> None:
        if self.offload and next(module.parameters()).device != self.host:
            self._move(name, module, self.host)

    def _move(self, name: str, module: torch.nn.Module, device: torch.device) -> None:
        module.to(device)
        self.moves.append((name, device))
        logger.info("low VRAM: %s (%.2f GiB) moved to %s", name, module_bytes(module) / 2**30, device)
