"""Motion Encode: driving face crops (and the source face crop) -> per-frame motion features."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..xportrait2_core.motion_stages import encode_features
from . import comfy_adapter
from .types import CATEGORY, MotionFeatures, XP2Models, XP2MotionFeatures, images_to_engine


class XPortrait2MotionEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2MotionEncode",
            display_name="X-Portrait 2 Motion Encode",
            category=CATEGORY,
            description="Runs the motion encoder once per driving frame and once on the source face crop.",
            inputs=[
                XP2Models.Input("xnemo_models"),
                io.Image.Input("driving_faces", tooltip="face crops of the driving video (Face Track & Crop)"),
                io.Image.Input("source_face", tooltip="the source's face crop (Face Crop (source))"),
            ],
            outputs=[XP2MotionFeatures.Output(display_name="motion_features")],
        )

    @classmethod
    def execute(cls, xnemo_models, driving_faces: torch.Tensor, source_face: torch.Tensor) -> io.NodeOutput:
        if source_face.shape[0] != 1:
            raise ValueError(
                f"source_face must be the one face crop of the source portrait, got {source_face.shape[0]} images "
                "(are driving_faces and source_face swapped?)"
            )
        comfy_adapter.make_resident(xnemo_models.motion_encoder)
        encoder = xnemo_models.models.motion_encoder
        progress = comfy_adapter.StepProgress(driving_faces.shape[0])
        driving = encode_features(encoder, images_to_engine(driving_faces), progress=progress.engine_callback)
        source = encode_features(encoder, images_to_engine(source_face))
        output = comfy_adapter.output_device()
        return io.NodeOutput(MotionFeatures(driving.to(output), source.to(output)))
