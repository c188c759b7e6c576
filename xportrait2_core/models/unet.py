"""The UNet body shared by the denoiser and the reference network (SD 1.x layout).

:class:`~xportrait2_core.models.unet3d.DenoisingUNet3D` adds the motion/temporal modules and the output
head; :class:`~xportrait2_core.models.reference_unet.ReferenceUNet` is the plain 2D network without
``conv_norm_out``/``conv_out``. Both take latents with frames folded into the batch axis.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import UNetConfig
from .operations import LayerFactory
from .unet_blocks import (
    DownLevel,
    FrameBatch,
    MidBlock,
    TimestepEmbedding,
    TransformerBlock,
    UpLevel,
    timestep_embedding,
)


class UNetBody(nn.Module):
    def __init__(self, config: UNetConfig, frame_modules: bool, layers: LayerFactory):
        super().__init__()
        self.config = config
        channels = config.block_out_channels
        levels = config.levels
        self.conv_in = layers.conv2d(config.in_channels, channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], config.time_embed_dim, layers)
        self.down_blocks = nn.ModuleList(
            DownLevel(
                channels[max(i - 1, 0)],
                channels[i],
                downsample=i < levels - 1,
                cross_attention=config.cross_attention_levels[i],
                frame_modules=frame_modules and config.module_down_levels[i],
                config=config,
                layers=layers,
            )
            for i in range(levels)
        )
        self.mid_block = MidBlock(channels[-1], frame_modules and config.module_mid_block, config, layers)
        reversed_channels = list(reversed(channels))
        self.up_blocks = nn.ModuleList(
            UpLevel(
                prev_channels=reversed_channels[max(i - 1, 0)],
                skip_in_channels=reversed_channels[min(i + 1, levels - 1)],
                out_channels=reversed_channels[i],
                upsample=i < levels - 1,
                cross_attention=config.cross_attention_levels[levels - 1 - i],
                frame_modules=frame_modules and config.module_up_levels[i],
                config=config,
                layers=layers,
            )
            for i in range(levels)
        )
        for path, module in self.named_modules():
            if isinstance(module, TransformerBlock):
                module.bank_key = path

    def transformer_blocks(self) -> dict[str, TransformerBlock]:
        """The spatial transformer blocks by module path: the reference-attention writers/readers."""
        return {m.bank_key: m for m in self.modules() if isinstance(m, TransformerBlock)}

    def embed_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        config = self.config
        sinusoid = timestep_embedding(timesteps, config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift)
        return self.time_embedding(sinusoid.to(self.conv_in.weight.dtype))

    def run_levels(self, x: torch.Tensor, batch: FrameBatch) -> torch.Tensor:
        """conv_in -> down levels -> mid -> up levels (before any output head)."""
        x = self.conv_in(x)
        skips = [x]
        for level in self.down_blocks:
            x, level_skips = level(x, batch)
            skips.extend(level_skips)
        x = self.mid_block(x, batch)
        for level in self.up_blocks:
            consumed = len(level.resnets)
            remaining = skips[:-consumed]
            upsample_to = tuple(remaining[-1].shape[-2:]) if remaining else None
            x = level(x, skips[-consumed:], batch, upsample_to)
            skips = remaining
        return x
