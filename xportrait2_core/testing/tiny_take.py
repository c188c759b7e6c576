"""One long take's sampling problem on tiny weights, with stand-in CLIP and VAE encoders: what the
sharding test and ``bench/farm.py`` sample in one process and over Ray workers."""

from __future__ import annotations

from pathlib import Path

import torch

from ..pipeline import XPortrait2Pipeline
from ..sampling import SamplingSettings
from ..weights.loading import load_models


def tiny_take(weights: Path, frames: int, size: int, steps: int) -> tuple[XPortrait2Pipeline, dict]:
    """A CPU fp32 pipeline on ``weights`` and the keyword arguments of its :meth:`sample` for a
    take of ``frames`` random motion tokens at ``size`` x ``size``, ``steps`` steps, seed 0."""
    models = load_models(weights, "cpu", torch.float32)
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn((1, 4, size // 8, size // 8), generator=generator)
    embeds = torch.randn((1, models.unet_config.cross_attention_dim), generator=generator)
    pipeline = XPortrait2Pipeline(models, image_encoder=lambda image: embeds, vae_encoder=lambda image: latent)
    inputs = dict(
        source=torch.rand((3, size, size), generator=generator),
        source_face=torch.rand((3, 224, 224), generator=generator),
        motion_tokens=torch.randn((frames, 32, 16), generator=generator),
        seed=0,
        settings=SamplingSettings(steps=steps),
    )
    return pipeline, inputs
