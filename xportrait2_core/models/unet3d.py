"""The X-NeMo denoiser (official ``UNet3DConditionModel``, spec section 3).

An SD 1.x UNet whose every level also carries motion modules (cross-attention to the 32 motion
tokens of each frame) and temporal modules (attention across the frames of the window), whose
self-attention also reads the reference UNet's banks, and whose cross-attention reads the CLIP
image embedding. Parameter names equal the official state-dict names (1820 keys at full size).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from .config import UNetConfig
from .motion_module import fold_motion_tokens
from .operations import LayerFactory
from .reference_attention import ReferenceRead
from .unet import UNetBody
from .unet_blocks import FrameBatch


class DenoisingUNet3D(UNetBody):
    def __init__(self, config: UNetConfig = UNetConfig(), layers: LayerFactory = LayerFactory()):
        super().__init__(config, frame_modules=True, layers=layers)
        channels = config.block_out_channels[0]
        self.conv_norm_out = layers.group_norm(config.norm_num_groups, channels, config.norm_eps)
        self.conv_out = layers.conv2d(channels, config.out_channels, 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, int],
        image_context: torch.Tensor,
        motion_tokens: torch.Tensor,
        reference: Optional[ReferenceRead] = None,
    ) -> torch.Tensor:
        """Predict the noise of a window.

        ``sample`` (B, 4, f, h, w) latents; ``timestep`` scalar or (B,); ``image_context``
        (B, 1, D) CLIP image embeddings (zeros for the unconditional branch); ``motion_tokens``
        (B, f, 32, 16); ``reference``: reference keys/values and which of the B rows use them.
        Returns (B, 4, f, h, w)."""
        batch_size, _, frames = sample.shape[:3]
        if motion_tokens.shape[:2] != (batch_size, frames):
            raise ValueError(
                f"motion tokens {tuple(motion_tokens.shape)} do not match {batch_size} x {frames} frames of latents"
            )
        if reference is not None and len(reference.rows) != batch_size:
            raise ValueError(f"reference rows {reference.rows} do not match the batch of {batch_size}")
        if isinstance(timestep, torch.Tensor):
            timesteps = timestep.to(sample.device).reshape(-1).expand(batch_size)
        else:  # filled on the device: a host scalar copied there would wait for the GPU
            timesteps = torch.full((batch_size,), timestep, dtype=torch.long, device=sample.device)
        batch = FrameBatch(
            frames=frames,
            time_embedding=repeat(self.embed_time(timesteps), "b d -> (b f) d", f=frames),
            image_context=repeat(image_context, "b n d -> (b f) n d", f=frames),
            motion_tokens=fold_motion_tokens(motion_tokens),
            reference=reference,
        )
        x = self.run_levels(rearrange(sample, "b c f h w -> (b f) c h w"), batch)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return rearrange(x, "(b f) c h w -> b c f h w", f=frames)
