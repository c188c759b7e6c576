"""The X-NeMo motion encoder (official ``MotEncoder_withExtra``, spec section 2).

A FAN hourglass trunk with three patch self-attention layers turns one 224x224 face crop in
[-1, 1] into 512 features; a small box branch is mixed in and the result is read as 32 motion
tokens of 16 channels. Every frame is encoded on its own (no normalisation or attention crosses
frames), so tokens can be computed once per frame and reused by every window and step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import Attention
from .attention_stack import AttentionStack, sincos_table
from .config import MotionEncoderConfig
from .operations import LayerFactory

CROP_SIZE = 224
NUM_TOKENS = 32
TOKEN_DIM = 16
FEATURE_DIM = NUM_TOKENS * TOKEN_DIM
BOX_DIM = 3
NEUTRAL_BOX = (0.0, 0.0, 1.0)
# Crops per encoder call. Driving videos are read in chunks of the same size, so that the IMAGE
# and VIDEO node paths feed the encoder identical batches (and give identical results).
MOTION_BATCH = 16


class ConvBlock(nn.Module):
    """Pre-activation residual block whose three 3x3 convs (o/2, o/4, o/4 channels) are concatenated."""

    def __init__(self, in_channels: int, out_channels: int, layers: LayerFactory):
        super().__init__()
        half, quarter = out_channels // 2, out_channels // 4
        self.bn1 = layers.batch_norm(in_channels)
        self.conv1 = layers.conv2d(in_channels, half, 3, padding=1, bias=False)
        self.bn2 = layers.batch_norm(half)
        self.conv2 = layers.conv2d(half, quarter, 3, padding=1, bias=False)
        self.bn3 = layers.batch_norm(quarter)
        self.conv3 = layers.conv2d(quarter, quarter, 3, padding=1, bias=False)
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                layers.batch_norm(in_channels),
                nn.ReLU(inplace=True),
                layers.conv2d(in_channels, out_channels, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLUs and the residual go into tensors made here: every new map at 112 or 56 px is a
        # full memory pass that costs as much as a small convolution.
        a = self.conv1(F.relu(self.bn1(x), inplace=True))
        b = self.conv2(F.relu(self.bn2(a), inplace=True))
        c = self.conv3(F.relu(self.bn3(b), inplace=True))
        out = torch.cat([a, b, c], dim=1)
        out += x if self.downsample is None else self.downsample(x)
        return out


class HourGlass(nn.Module):
    """Recursive encoder-decoder of ConvBlocks named ``b1_L``, ``b2_L``, ``b3_L`` and ``b2_plus_1``."""

    def __init__(self, depth: int, channels: int, layers: LayerFactory):
        super().__init__()
        self.depth = depth
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(channels, channels, layers))
            self.add_module(f"b2_{level}", ConvBlock(channels, channels, layers))
        self.add_module("b2_plus_1", ConvBlock(channels, channels, layers))
        for level in range(1, depth + 1):
            self.add_module(f"b3_{level}", ConvBlock(channels, channels, layers))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        upper = self._modules[f"b1_{level}"](x)
        lower = self._modules[f"b2_{level}"](F.max_pool2d(x, 2, stride=2))
        if level > 1:
            lower = self._level(level - 1, lower)
        else:
            lower = self._modules["b2_plus_1"](lower)
        lower = self._modules[f"b3_{level}"](lower)
        return upper.add_(F.interpolate(lower, size=upper.shape[-2:], mode="bilinear", align_corners=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


class PatchEmbedding(nn.Module):
    """``proj``: patchify conv to ``dim`` channels, plus a fixed 2-D sin-cos table (not in checkpoints)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, grid_size: int, layers: LayerFactory):
        super().__init__()
        self.proj = layers.conv2d(in_channels, dim, patch_size, stride=patch_size)
        positions = torch.arange(grid_size)
        columns = sincos_table(positions.repeat(grid_size), dim // 2, interleaved=False)
        rows = sincos_table(positions.repeat_interleave(grid_size), dim // 2, interleaved=False)
        table = torch.cat([columns, rows], dim=1).float().unsqueeze(0)
        self.register_buffer("pos_embed", table.to(device=layers.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = rearrange(self.proj(x), "n c h w -> n (h w) c")
        # The table first: the sum then takes its token-major layout even when the convolution
        # gave a channel-major map (the strided view first would pass that layout on to the sum,
        # and every norm and projection after it would copy).
        return (self.pos_embed + tokens).to(tokens.dtype)


class PatchAttention(nn.Module):
    """Spatial self-attention over p x p patches of one feature map, added back as a residual.

    (Named ``TemporalTransformer3DModel`` upstream, but it never mixes frames.)"""

    def __init__(self, channels: int, patch_size: int, map_size: int, config: MotionEncoderConfig, layers: LayerFactory):
        super().__init__()
        self.patch_size = patch_size
        dim, heads = config.attention_dim, config.attention_heads
        self.norm = layers.group_norm(32, channels, eps=1e-6)
        self.pos_embed = PatchEmbedding(channels, dim, patch_size, map_size // patch_size, layers)

        def self_attention() -> nn.Module:
            return Attention(dim, heads, dim // heads, layers)

        self.transformer_blocks = nn.ModuleList([AttentionStack(dim, layers, self_attention, 1)])
        self.proj_out = layers.linear(dim // patch_size**2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adds to ``x`` in place (the trunk passes maps it owns)."""
        height, width = x.shape[-2:]
        tokens = self.pos_embed(self.norm(x))
        for block in self.transformer_blocks:
            tokens = block(tokens)
        p = self.patch_size
        pixels = rearrange(tokens, "n (h w) (p q c) -> n h w p q c", h=height // p, p=p, q=p)
        # Un-patchify by adding through a patch-ordered view of ``x``: no pixel-ordered copy.
        rearrange(x, "n c (h p) (w q) -> n h w p q c", p=p, q=p).add_(self.proj_out(pixels))
        return x


class FaceTrunk(nn.Module):
    """``FAN_SA``: 224x224 crop -> 512 expression features."""

    def __init__(self, config: MotionEncoderConfig, layers: LayerFactory):
        super().__init__()
        stem, mid, deep, landmarks = config.stem_channels, config.mid_channels, config.deep_channels, config.landmark_channels
        self.conv1 = layers.conv2d(3, stem, 7, stride=2, padding=3)
        self.bn1 = layers.batch_norm(stem)
        self.conv2 = ConvBlock(stem, mid, layers)
        self.att_1 = PatchAttention(mid, patch_size=4, map_size=112, config=config, layers=layers)
        self.conv3 = ConvBlock(mid, mid, layers)
        self.conv4 = ConvBlock(mid, deep, layers)
        self.att_2 = PatchAttention(deep, patch_size=2, map_size=56, config=config, layers=layers)
        self.m0 = HourGlass(config.hourglass_depth, deep, layers)
        self.top_m_0 = ConvBlock(deep, deep, layers)
        self.conv_last0 = layers.conv2d(deep, deep, 1)
        self.bn_end0 = layers.batch_norm(deep)
        self.att_3 = PatchAttention(deep, patch_size=2, map_size=56, config=config, layers=layers)
        self.l0 = layers.conv2d(deep, landmarks, 1)
        self.bn5 = layers.batch_norm(landmarks)
        self.conv6 = layers.conv2d(landmarks, 1, 3, stride=2, padding=1)
        self.fc = layers.linear(28 * 28, FEATURE_DIM)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        # Channels-last maps all the way: oneDNN convolves them without reordering, and the
        # patch attentions' token views and un-patchify additions become contiguous.
        x = F.relu(self.bn1(self.conv1(crops.contiguous(memory_format=torch.channels_last))), inplace=True)
        x = self.att_1(self.conv2(x))
        x = self.conv4(self.conv3(F.max_pool2d(x, 2)))
        x = self.att_2(x)
        x = self.top_m_0(self.m0(x))
        x = self.att_3(self.bn_end0(self.conv_last0(x)))
        x = F.relu(self.bn5(self.l0(F.relu(x, inplace=True))), inplace=True)
        x = F.relu(self.conv6(x).flatten(1), inplace=True)
        return self.fc(x)


class MotionEncoder(nn.Module):
    """Face crops (N, 3, 224, 224) in [-1, 1] and boxes (N, 3) -> motion tokens (N, 32, 16)."""

    def __init__(self, config: MotionEncoderConfig = MotionEncoderConfig(), layers: LayerFactory = LayerFactory()):
        super().__init__()
        self.config = config
        self.model = FaceTrunk(config, layers)
        positions = torch.arange(NUM_TOKENS)
        table = sincos_table(positions, TOKEN_DIM, interleaved=False).float().unsqueeze(0)
        self.register_buffer("pe", table.to(device=layers.device, dtype=layers.dtype))
        self.bbox_proj = nn.Sequential(
            layers.linear(BOX_DIM, 64), nn.ReLU(), nn.Identity(), layers.linear(64, 64)
        )
        self.final_proj = layers.linear(FEATURE_DIM + 64, FEATURE_DIM)

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """The trunk's 512 expression features per crop, before the box branch."""
        if crops.shape[-3:] != (3, CROP_SIZE, CROP_SIZE):
            raise ValueError(
                f"motion encoder expects face crops of shape (N, 3, {CROP_SIZE}, {CROP_SIZE}), got {tuple(crops.shape)}"
            )
        return self.model(crops)

    def tokens_from_features(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Mix the box vectors into the features and read them as (N, 32, 16) tokens."""
        mixed = self.final_proj(torch.cat([features, self.bbox_proj(boxes)], dim=1))
        return rearrange(mixed, "n (l c) -> n l c", c=TOKEN_DIM) + self.pe

    def forward(self, crops: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.tokens_from_features(self.features(crops), boxes)


def neutral_boxes(count: int, device=None, dtype=None) -> torch.Tensor:
    """The box vector the official pipeline uses for every frame: [0, 0, 1]."""
    return torch.tensor(NEUTRAL_BOX, device=device, dtype=dtype).expand(count, BOX_DIM)
