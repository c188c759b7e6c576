"""``torch.compile`` of the denoiser, opt-in (``--compile``, ``AnimateRequest.compile``).

Measured on an H200 at the official settings (bench/gpu.py, bench/README.md): one guidance call
1.30x faster (Inductor fuses the element-wise work, norms and residual adds around the matrix
products), final latents within fp16 rounding of the eager ones. The first call pays the
compilation, about 2 minutes; PyTorch keeps Inductor's results on disk (``TORCHINDUCTOR_CACHE_DIR``,
by default a folder in the temporary directory), so later runs compile in about 15 s. Worth it for
long takes and batches, not for one short clip, hence off by default.
"""

from __future__ import annotations

import logging

from .models.unet3d import DenoisingUNet3D

logger = logging.getLogger(__name__)


def compile_denoiser(denoiser: DenoisingUNet3D) -> DenoisingUNet3D:
    """Compile ``denoiser`` in place (its parameters, names and state dict are unchanged).

    Static shapes: every window of a run has the same shape, and a short video (one window of
    fewer frames) compiles once more rather than making every call dynamic."""
    logger.info("the denoiser is compiled at its first call: about 2 minutes, or seconds with a warm cache")
    denoiser.compile(dynamic=False)
    return denoiser
