"""Building blocks of the two UNets (SD 1.x layout, diffusers parameter names).

Frames are folded into the batch axis everywhere (sample ``b * f + k``): every GroupNorm,
convolution and spatial attention works on one frame, exactly like the official "inflated"
layers; only the temporal modules regroup the frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import Attention, FeedForward
from .config import UNetConfig
from .motion_module import MotionModule
from .operations import LayerFactory
from .reference_attention import BankRecorder, ReferenceRead, self_attention_with_reference
from .temporal_module import TemporalModule


@dataclass(frozen=True)
class FrameBatch:
    """What every block of one UNet call needs besides the feature map.

    ``time_embedding`` (N, D), ``image_context`` (N, 1, D_clip) and ``motion_tokens`` (N, 32, d)
    are per folded sample (N = batch * frames); ``reference`` is the writer's recorder (reference
    UNet) or the reader's keys/values (denoiser), or None."""

    frames: int
    time_embedding: torch.Tensor
    image_context: torch.Tensor
    motion_tokens: Optional[torch.Tensor] = None
    reference: Union[BankRecorder, ReferenceRead, None] = None


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float) -> torch.Tensor:
    """Sinusoidal embedding (float32) of integer timesteps, diffusers' ``Timesteps``."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / (half - shift)
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        embedding = torch.cat([embedding[:, half:], embedding[:, :half]], dim=-1)
    return embedding


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int, layers: LayerFactory):
        super().__init__()
        self.linear_1 = layers.linear(in_dim, dim)
        self.linear_2 = layers.linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig, layers: LayerFactory):
        super().__init__()
        groups, eps = config.norm_num_groups, config.norm_eps
        self.norm1 = layers.group_norm(groups, in_channels, eps)
        self.conv1 = layers.conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = layers.linear(config.time_embed_dim, out_channels)
        self.norm2 = layers.group_norm(groups, out_channels, eps)
        self.conv2 = layers.conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = layers.conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, batch: FrameBatch) -> torch.Tensor:
        # Activations and additions land in tensors this block has just made: feature maps are
        # the largest tensors of the network, and each new one is a full extra memory pass.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h += self.time_emb_proj(F.silu(batch.time_embedding))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        h += x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h


class Downsample(nn.Module):
    def __init__(self, channels: int, layers: LayerFactory):
        super().__init__()
        self.conv = layers.conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, layers: LayerFactory):
        super().__init__()
        self.conv = layers.conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # Nearest-neighbour to the size of the skip connection it meets (2x for even sizes).
        upsampled = F.interpolate(x.float() if x.dtype == torch.bfloat16 else x, size=size, mode="nearest")
        return self.conv(upsampled.to(x.dtype))


class TransformerBlock(nn.Module):
    """Self-attention (with reference attention), CLIP cross-attention, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, context_dim: int, layers: LayerFactory):
        super().__init__()
        self.norm1 = layers.layer_norm(dim)
        self.attn1 = Attention(dim, heads, dim // heads, layers)
        self.norm2 = layers.layer_norm(dim)
        self.attn2 = Attention(dim, heads, dim // heads, layers, context_dim=context_dim)
        self.norm3 = layers.layer_norm(dim)
        self.ff = FeedForward(dim, layers)
        self.bank_key = ""  # module path, set by the UNet; pairs writer and reader blocks

    def forward(self, x: torch.Tensor, batch: FrameBatch) -> torch.Tensor:
        """``x``: (N, tokens, C), contiguous; the residuals are added to it in place."""
        normed = self.norm1(x)
        reference = batch.reference
        if isinstance(reference, BankRecorder):
            reference.record(self.bank_key, normed)
            x += self.attn1(normed)
        elif isinstance(reference, ReferenceRead):
            keys_values = reference.keys_values.by_block[self.bank_key]
            x += self_attention_with_reference(self.attn1, normed, batch.frames, keys_values, reference.rows)
        else:
            x += self.attn1(normed)
        x += self._image_cross_attention(x, batch.image_context)
        return self.ff.add_to(x, self.norm3)

    def _image_cross_attention(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if context.shape[1] == 1:
            # One key token: its softmax weight is exactly 1, so every query gets its value
            # (N, 1, C), whatever ``norm2(x)`` is.
            return self.attn2.to_out[0](self.attn2.to_v(context))
        return self.attn2(self.norm2(x), context)


class SpatialTransformer(nn.Module):
    """``attentions.j``: GroupNorm -> 1x1 ``proj_in`` -> one TransformerBlock -> 1x1 ``proj_out``, residual."""

    def __init__(self, channels: int, config: UNetConfig, layers: LayerFactory):
        super().__init__()
        self.norm = layers.group_norm(config.norm_num_groups, channels, eps=1e-6)
        self.proj_in = layers.conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(channels, config.attention_heads, config.cross_attention_dim, layers)]
        )
        self.proj_out = layers.conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, batch: FrameBatch) -> torch.Tensor:
        """Adds to ``x`` in place (the level passes the feature map it owns)."""
        height, width = x.shape[-2:]
        # One copy into token order, so that the blocks' norms and in-place residuals work on
        # contiguous rows (a strided token view would be copied by every norm).
        tokens = rearrange(self.proj_in(self.norm(x)), "n c h w -> n (h w) c").contiguous()
        for block in self.transformer_blocks:
            tokens = block(tokens, batch)
        return x.add_(self.proj_out(rearrange(tokens, "n (h w) c -> n c h w", h=height, w=width)))


class UNetLevel(nn.Module):
    """One down or up level: ``layers`` x (resnet -> attention -> motion -> temporal), where the
    last three are present as configured; up levels first concatenate a skip connection."""

    def __init__(
        self,
        resnet_channels: list[tuple[int, int]],
        out_channels: int,
        cross_attention: bool,
        frame_modules: bool,
        config: UNetConfig,
        layers: LayerFactory,
        module_count: Optional[int] = None,
    ):
        super().__init__()
        count = len(resnet_channels) if module_count is None else module_count
        self.resnets = nn.ModuleList([ResnetBlock(i, o, config, layers) for i, o in resnet_channels])
        if cross_attention:
            self.attentions = nn.ModuleList([SpatialTransformer(out_channels, config, layers) for _ in range(count)])
        if frame_modules:
            self.motion_modules = nn.ModuleList(
                [MotionModule(out_channels, config.motion_heads, config.motion_token_dim, layers) for _ in range(count)]
            )
            self.temporal_modules = nn.ModuleList(
                [TemporalModule(out_channels, config.temporal_heads, config.temporal_max_frames, layers) for _ in range(count)]
            )

    def layer(self, index: int, x: torch.Tensor, batch: FrameBatch) -> torch.Tensor:
        x = self.resnets[index](x, batch)
        return self.after_resnet(index, x, batch)

    def after_resnet(self, index: int, x: torch.Tensor, batch: FrameBatch) -> torch.Tensor:
        # ``x`` is the resnet's own output: the modules add their residuals to it in place.
        if hasattr(self, "attentions"):
            x = self.attentions[index](x, batch)
        if hasattr(self, "motion_modules"):
            x = self.motion_modules[index](x, batch.motion_tokens)
            x = self.temporal_modules[index](x, batch.frames)
        return x


class DownLevel(UNetLevel):
    def __init__(self, in_channels, out_channels, downsample, cross_attention, frame_modules, config, layers):
        count = config.layers_per_block
        channels = [(in_channels if j == 0 else out_channels, out_channels) for j in range(count)]
        super().__init__(channels, out_channels, cross_attention, frame_modules, config, layers)
        if downsample:
            self.downsamplers = nn.ModuleList([Downsample(out_channels, layers)])

    def forward(self, x: torch.Tensor, batch: FrameBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for index in range(len(self.resnets)):
            x = self.layer(index, x, batch)
            skips.append(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(UNetLevel):
    """resnets.0 -> attention -> motion -> temporal -> resnets.1."""

    def __init__(self, channels, frame_modules, config, layers):
        super().__init__([(channels, channels)] * 2, channels, True, frame_modules, config, layers, module_count=1)

    def forward(self, x: torch.Tensor, batch: FrameBatch) -> torch.Tensor:
        x = self.resnets[0](x, batch)
        x = self.after_resnet(0, x, batch)
        return self.resnets[1](x, batch)


class UpLevel(UNetLevel):
    def __init__(self, prev_channels, skip_in_channels, out_channels, upsample, cross_attention, frame_modules, config, layers):
        count = config.layers_per_block + 1
        channels = []
        for j in range(count):
            skip = skip_in_channels if j == count - 1 else out_channels
            channels.append(((prev_channels if j == 0 else out_channels) + skip, out_channels))
        super().__init__(channels, out_channels, cross_attention, frame_modules, config, layers)
        if upsample:
            self.upsamplers = nn.ModuleList([Upsample(out_channels, layers)])

    def forward(
        self, x: torch.Tensor, skips: list[torch.Tensor], batch: FrameBatch, upsample_to: Optional[tuple[int, int]]
    ) -> torch.Tensor:
        for index in range(len(self.resnets)):
            x = self.layer(index, torch.cat([x, skips.pop()], dim=1), batch)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x, upsample_to)
        return x
