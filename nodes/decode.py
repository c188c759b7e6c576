"""Decode: the SVD temporal VAE in clips of 25 frames as the official code decodes, and a loader
that accepts the SVD VAE in the diffusers layout the official weights folder holds."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..xportrait2_core.pipeline import DECODE_CHUNK
from . import comfy_adapter
from .types import CATEGORY


class XPortrait2LoadTemporalVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2LoadTemporalVAE",
            display_name="X-Portrait 2 Load VAE (SVD temporal)",
            category=CATEGORY,
            description=(
                "Loads a VAE from models/vae like core Load VAE, and also accepts the SVD temporal VAE as diffusers "
                "saves it (stable-video-diffusion-img2vid-xt/vae/diffusion_pytorch_model.safetensors), which core "
                "Load VAE does not recognise."
            ),
            inputs=[io.Combo.Input("vae_name", options=comfy_adapter.vae_file_choices())],
            outputs=[io.Vae.Output(display_name="vae")],
        )

    @classmethod
    def execute(cls, vae_name: str) -> io.NodeOutput:
        return io.NodeOutput(comfy_adapter.load_vae(vae_name))


class XPortrait2TemporalDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2TemporalDecode",
            display_name="X-Portrait 2 Temporal Decode",
            category=CATEGORY,
            description=(
                "Decodes the animation's LATENT clip by clip: the SVD temporal decoder blends frames within one "
                "decode call, and the official code decodes 25 consecutive frames at a time. Any other VAE works "
                "here too (or through core VAE Decode)."
            ),
            inputs=[
                io.Vae.Input("vae"),
                io.Latent.Input("latent"),
                io.Int.Input("frames_per_clip", default=DECODE_CHUNK, min=1, max=256),
            ],
            outputs=[io.Image.Output(display_name="frames")],
        )

    @classmethod
    def execute(cls, vae, latent: dict, frames_per_clip: int) -> io.NodeOutput:
        samples = latent["samples"]
        count = samples.shape[0]
        progress = comfy_adapter.StepProgress(-(-count // frames_per_clip))
        clips = []
        for start in range(0, count, frames_per_clip):
            clips.append(comfy_adapter.vae_decode(vae, samples[start : start + frames_per_clip]))
            progress.tick()
        return io.NodeOutput(torch.cat(clips))
