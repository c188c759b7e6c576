"""ID-filtered motion latents: motion features -> the identity-free tokens the denoiser attends
to, the negative (source-face) tokens, and the artist controls (defaults = official result)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..xportrait2_core.identity_filtered_motion import MotionControls, identity_filtered_tokens
from . import comfy_adapter
from .types import CATEGORY, MotionTokens, XP2Models, XP2Motion, XP2MotionFeatures


class XPortrait2MotionLatents(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2MotionLatents",
            display_name="X-Portrait 2 ID-Filtered Motion Latents",
            category=CATEGORY,
            description=(
                "Turns motion features into the 32x16 motion tokens per frame that drive the animation. "
                "The defaults reproduce the official result."
            ),
            inputs=[
                XP2Models.Input("xnemo_models"),
                XP2MotionFeatures.Input("motion_features"),
                io.Float.Input(
                    "motion_intensity", default=1.0, min=0.0, max=2.0, step=0.05,
                    tooltip="scales every frame's motion away from the rest pose (1 = as driven)",
                ),
                io.Boolean.Input(
                    "relative_to_neutral", default=False,
                    tooltip="apply motion relative to the neutral driving frame on top of the source's own face, "
                    "so the driver's resting face does not leak into the animation",
                ),
                io.Int.Input(
                    "neutral_frame", default=0, min=0, max=100000,
                    tooltip="the driving frame that shows the rest pose (for intensity and relative motion)",
                ),
                io.Float.Input(
                    "temporal_smoothing", default=0.0, min=0.0, max=10.0, step=0.5,
                    tooltip="Gaussian smoothing of the motion over time, sigma in frames (0 = off)",
                ),
            ],
            outputs=[XP2Motion.Output(display_name="motion")],
        )

    @classmethod
    def execute(
        cls, xnemo_models, motion_features, motion_intensity: float, relative_to_neutral: bool, neutral_frame: int,
        temporal_smoothing: float,
    ) -> io.NodeOutput:
        device = comfy_adapter.make_resident(xnemo_models.motion_encoder)
        encoder = xnemo_models.models.motion_encoder
        dtype = next(encoder.parameters()).dtype
        controls = MotionControls(motion_intensity, relative_to_neutral, neutral_frame, temporal_smoothing)
        driving, negative = identity_filtered_tokens(
            encoder, motion_features.driving.to(device, dtype), motion_features.source.to(device, dtype), controls
        )
        output = comfy_adapter.output_device()
        return io.NodeOutput(MotionTokens(driving.to(output), negative.to(output)))
