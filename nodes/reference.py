"""Reference appearance: source image + CLIP vision + VAE -> reference latent, CLIP image
embedding and the reference-attention keys/values, computed once per source."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.reference_appearance import check_reference_size, encode_reference
from . import comfy_adapter
from .types import CATEGORY, ReferenceAppearance, XP2Models, XP2Reference


class XPortrait2ReferenceAppearance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2ReferenceAppearance",
            display_name="X-Portrait 2 Reference Appearance",
            category=CATEGORY,
            description=(
                "Encodes the reference image once: VAE latent, CLIP image embedding (ViT-L/14, e.g. the "
                "sd-image-variations image encoder) and the reference UNet's attention banks."
            ),
            inputs=[
                XP2Models.Input("xnemo_models"),
                io.Image.Input("reference_image", tooltip="the reference image of Face Crop (source)"),
                io.ClipVision.Input("clip_vision"),
                io.Vae.Input("vae"),
            ],
            outputs=[XP2Reference.Output(display_name="reference")],
        )

    @classmethod
    def execute(cls, xnemo_models, reference_image: torch.Tensor, clip_vision, vae) -> io.NodeOutput:
        if reference_image.shape[0] != 1:
            raise ValueError(f"reference_image must be one image, got a batch of {reference_image.shape[0]}")
        check_reference_size(*reference_image.shape[1:3])
        expected = xnemo_models.models.unet_config.cross_attention_dim
        # CLIP and VAE first: loading them may offload our networks, which are loaded after.
        image_embeds = comfy_adapter.clip_image_embeds(clip_vision, reference_image)
        if image_embeds.shape[-1] != expected:
            raise ValueError(
                f"the CLIP vision model gives {image_embeds.shape[-1]}-dim image embeddings but the X-NeMo denoiser "
                f"expects {expected}: load the ViT-L/14 image encoder (sd-image-variations-diffusers/image_encoder "
                "or clip_vision_vit_l)"
            )
        latent_mean = comfy_adapter.vae_encode(vae, reference_image)
        if latent_mean.ndim != 4 or latent_mean.shape[1] != 4:
            raise ValueError(
                f"the VAE gives latents of shape {tuple(latent_mean.shape)}; X-NeMo needs an SD-family VAE with 4 "
                "latent channels (the SVD temporal VAE or an SD 1.5 VAE)"
            )
        device = comfy_adapter.make_resident(xnemo_models.reference_unet, xnemo_models.denoiser)
        latent, embeds, keys_values = encode_reference(xnemo_models.models, latent_mean, image_embeds, device)
        output = comfy_adapter.output_device()
        return io.NodeOutput(ReferenceAppearance(latent.to(output), embeds.to(output), keys_values.to(output)))
