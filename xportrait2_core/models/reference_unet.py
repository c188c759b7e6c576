"""The reference UNet (spec sections 1.2 and 4): an SD 1.x UNet, without ``conv_norm_out`` and
``conv_out`` (682 keys at full size), that runs once per source image to write the banks that
the denoiser's reference attention reads."""

from __future__ import annotations

import torch

from .config import UNetConfig
from .operations import LayerFactory
from .reference_attention import BankRecorder
from .unet import UNetBody
from .unet_blocks import FrameBatch


class ReferenceUNet(UNetBody):
    def __init__(self, config: UNetConfig = UNetConfig(), layers: LayerFactory = LayerFactory()):
        super().__init__(config, frame_modules=False, layers=layers)

    def forward(self, reference_latents: torch.Tensor, image_context: torch.Tensor) -> dict[str, torch.Tensor]:
        """The writer pass: clean latents (B, 4, h, w) at timestep 0 with the CLIP context
        (B, 1, D) -> every transformer block's ``norm1`` output (B, h*w, C) by module path."""
        recorder = BankRecorder()
        timesteps = torch.zeros(reference_latents.shape[0], dtype=torch.long, device=reference_latents.device)
        batch = FrameBatch(
            frames=1,
            time_embedding=self.embed_time(timesteps),
            image_context=image_context,
            reference=recorder,
        )
        self.run_levels(reference_latents, batch)
        return recorder.banks
