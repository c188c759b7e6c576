"""Paste back: animated frames (any size, e.g. after an upscaler) -> full-resolution frames of
the source picture."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.media.paste_back import paste_back
from . import comfy_adapter
from .types import CATEGORY, SourceFace, XP2Source, engine_to_images, images_to_engine

FRAME_CHUNK = 8


class XPortrait2PasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2PasteBack",
            display_name="X-Portrait 2 Paste Back",
            category=CATEGORY,
            description="Blends the animated square back into the full-resolution source portrait, frame by frame.",
            inputs=[
                io.Image.Input("frames", tooltip="animated frames (decoded, optionally upscaled)"),
                XP2Source.Input("source_face"),
                io.Float.Input(
                    "feather", default=0.1, min=0.0, max=0.5, step=0.01,
                    tooltip="width of the soft seam, as a fraction of the square's side",
                ),
            ],
            outputs=[io.Image.Output(display_name="frames")],
        )

    @classmethod
    def execute(cls, frames: torch.Tensor, source_face: SourceFace, feather: float) -> io.NodeOutput:
        picture, box = source_face.picture, source_face.portrait.reference_box
        output = torch.empty((frames.shape[0], *picture.shape[1:], 3), device=comfy_adapter.output_device())
        progress = comfy_adapter.StepProgress(frames.shape[0])
        for start in range(0, frames.shape[0], FRAME_CHUNK):
            chunk = images_to_engine(frames[start : start + FRAME_CHUNK])
            output[start : start + len(chunk)] = engine_to_images(paste_back(picture, chunk, box, feather))
            progress.engine_callback("paste-back", start + len(chunk), frames.shape[0])
        return io.NodeOutput(output)
