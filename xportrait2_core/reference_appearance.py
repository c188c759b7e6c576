"""The reference pass: what the source portrait gives every denoiser call, computed once per source.

The VAE latent of the reference image, its CLIP image embedding and the reference UNet's
attention banks turned into the denoiser's reference keys/values. The VAE and CLIP run outside
(the engine's injected callables, or ComfyUI's models); this is where both paths meet.
"""

from __future__ import annotations

from typing import Optional

import torch

from .models.reference_attention import ReferenceKeysValues, reference_keys_values
from .weights.loading import XNemoModels

VAE_SCALING = 0.18215


def check_reference_size(height: int, width: int) -> None:
    if height % 8 or width % 8:
        raise ValueError(f"source image size {(height, width)} must be a multiple of 8")


@torch.no_grad()
def encode_reference(
    models: XNemoModels, latent_mean: torch.Tensor, image_embeds: torch.Tensor, device: Optional[torch.device] = None
) -> tuple[torch.Tensor, torch.Tensor, ReferenceKeysValues]:
    """Unscaled VAE posterior mean (1, 4, h, w) and CLIP ``image_embeds`` (1, D) of the reference
    image -> scaled latent (1, 4, h, w) and embedding on the compute device in the denoiser's
    dtype, and the reference keys/values of the denoiser (one reference-UNet pass).

    ``device`` defaults to where the denoiser's weights are; a caller whose weights are streamed
    to the compute device layer by layer (ComfyUI's dynamic VRAM) names it."""
    weight = models.denoiser.conv_in.weight
    device = weight.device if device is None else device
    latents = latent_mean.to(device, weight.dtype) * VAE_SCALING
    image_embeds = image_embeds.to(device, weight.dtype)
    banks = models.reference_unet(latents, image_embeds.unsqueeze(1))
    return latents, image_embeds, reference_keys_values(banks, models.denoiser.transformer_blocks())
