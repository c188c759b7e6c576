"""Temporal sampler: ComfyUI's samplers and sigmas drive the steps, the pack supplies the model
call that walks the context windows over all frames. Basic and advanced (SAMPLER + SIGMAS
inputs like core SamplerCustom) variants, and a scheduler node for the advanced one."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.sampling import Conditioning, SamplingSettings
from . import comfy_adapter
from .types import CATEGORY, MotionTokens, ReferenceAppearance, XP2Models, XP2Motion, XP2Reference

DEFAULTS = SamplingSettings()


def _shared_inputs() -> list:
    return [
        XP2Models.Input("xnemo_models"),
        XP2Reference.Input("reference"),
        XP2Motion.Input("motion"),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
        io.Float.Input(
            "guidance", default=DEFAULTS.guidance_scale, min=1.0, max=20.0, step=0.1, round=0.01,
            tooltip="classifier-free guidance between the source appearance + driving motion and no appearance + "
            "source-face motion",
        ),
        io.Int.Input(
            "context_frames", default=DEFAULTS.context_frames, min=2, max=32,
            tooltip="frames denoised together in one window (the temporal modules know at most 32)",
        ),
        io.Int.Input(
            "context_overlap", default=DEFAULTS.context_overlap, min=0, max=31,
            tooltip="frames shared by neighbouring windows, averaged",
        ),
    ]


def _sample(xnemo_models, reference: ReferenceAppearance, motion: MotionTokens, sampler, sigmas: torch.Tensor,
            seed: int, guidance: float, context_frames: int, context_overlap: int) -> io.NodeOutput:
    if context_overlap >= context_frames:
        raise ValueError(f"context_overlap ({context_overlap}) must be smaller than context_frames ({context_frames})")
    if len(sigmas) < 2:
        raise ValueError("the sigmas hold no step (at least two values are needed)")
    conditioning = Conditioning(motion.driving, motion.negative, reference.image_embeds, reference.keys_values)
    samples = comfy_adapter.sample_frames(
        xnemo_models, conditioning, reference.latent, sampler, sigmas, seed, guidance, context_frames, context_overlap
    )
    return io.NodeOutput({"samples": samples})


class XPortrait2Sampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2Sampler",
            display_name="X-Portrait 2 Temporal Sampler",
            category=CATEGORY,
            description=(
                "Animates all frames with any ComfyUI sampler and scheduler, window by window. The defaults (ddim, "
                "xnemo_ddim, 35 steps, guidance 2.5, 24/4 windows) reproduce the official result. Output: LATENT "
                "with frames as batch."
            ),
            inputs=[
                *_shared_inputs(),
                io.Int.Input("steps", default=DEFAULTS.steps, min=1, max=1000),
                io.Combo.Input("sampler_name", options=comfy_adapter.sampler_names(), default=comfy_adapter.DEFAULT_SAMPLER),
                io.Combo.Input(
                    "scheduler", options=comfy_adapter.scheduler_names(), default=comfy_adapter.OFFICIAL_SCHEDULER,
                    tooltip="xnemo_ddim: the official DDIM timesteps (953 ... 1 for 35 steps)",
                ),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, xnemo_models, reference, motion, seed: int, guidance: float, context_frames: int,
                context_overlap: int, steps: int, sampler_name: str, scheduler: str) -> io.NodeOutput:
        sigmas = comfy_adapter.sigmas_for(xnemo_models, scheduler, steps, sampler_name)
        sampler = comfy_adapter.sampler_object(sampler_name)
        return _sample(xnemo_models, reference, motion, sampler, sigmas, seed, guidance, context_frames, context_overlap)


class XPortrait2SamplerAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2SamplerAdvanced",
            display_name="X-Portrait 2 Temporal Sampler (advanced)",
            category=CATEGORY,
            description="The temporal sampler with SAMPLER and SIGMAS inputs, like core SamplerCustom.",
            inputs=[*_shared_inputs(), io.Sampler.Input("sampler"), io.Sigmas.Input("sigmas")],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, xnemo_models, reference, motion, seed: int, guidance: float, context_frames: int,
                context_overlap: int, sampler, sigmas: torch.Tensor) -> io.NodeOutput:
        return _sample(xnemo_models, reference, motion, sampler, sigmas, seed, guidance, context_frames, context_overlap)


class XPortrait2Scheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2Scheduler",
            display_name="X-Portrait 2 Scheduler",
            category=CATEGORY,
            description=(
                "SIGMAS on X-NeMo's noise schedule (scaled-linear betas up to 0.02), for the advanced sampler or any "
                "sigma-editing node; xnemo_ddim gives the official DDIM timesteps."
            ),
            inputs=[
                XP2Models.Input("xnemo_models"),
                io.Combo.Input("scheduler", options=comfy_adapter.scheduler_names(), default=comfy_adapter.OFFICIAL_SCHEDULER),
                io.Int.Input("steps", default=DEFAULTS.steps, min=1, max=1000),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas")],
        )

    @classmethod
    def execute(cls, xnemo_models, scheduler: str, steps: int) -> io.NodeOutput:
        return io.NodeOutput(comfy_adapter.sigmas_for(xnemo_models, scheduler, steps))
