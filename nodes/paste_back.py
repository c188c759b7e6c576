"""Paste back: animated frames (any size, e.g. after an upscaler) -> full-resolution frames of
the source picture. Chain one per face (``frames_so_far``) to put several faces into one video."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.media.face_blend import FacePaste, paste_onto
from . import comfy_adapter
from .types import CATEGORY, SourceFace, XP2Source, blend_input, engine_to_images, images_to_engine

FRAME_CHUNK = 8


class XPortrait2PasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2PasteBack",
            display_name="X-Portrait 2 Paste Back",
            category=CATEGORY,
            description=(
                "Blends the animated face back into the full-resolution source portrait, frame by frame. For several "
                "faces chain one Paste Back per face: connect the previous one's frames to frames_so_far. Where two "
                "faces' regions overlap, the overlap is split between them."
            ),
            inputs=[
                io.Image.Input("frames", tooltip="animated frames (decoded, optionally upscaled)"),
                XP2Source.Input("source_face"),
                io.Float.Input(
                    "feather", default=0.1, min=0.0, max=0.5, step=0.01,
                    tooltip="width of the soft seam at the square's border, as a fraction of the square's side",
                ),
                blend_input(),
                io.Image.Input(
                    "frames_so_far", optional=True,
                    tooltip="full-resolution frames of the previous face's Paste Back, to add this face to",
                ),
            ],
            outputs=[io.Image.Output(display_name="frames")],
        )

    @classmethod
    def execute(
        cls, frames: torch.Tensor, source_face: SourceFace, feather: float, blend: str = "head",
        frames_so_far: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        picture = source_face.picture
        if frames_so_far is not None and tuple(frames_so_far.shape[1:3]) != tuple(picture.shape[1:]):
            raise ValueError(
                f"frames_so_far are {frames_so_far.shape[2]}x{frames_so_far.shape[1]}, the portrait is "
                f"{picture.shape[2]}x{picture.shape[1]}: connect the Paste Back of the same portrait"
            )
        paste = FacePaste.plan(source_face.regions, source_face.index, *picture.shape[1:], blend, feather)
        count = frames.shape[0]
        output = torch.empty((count, *picture.shape[1:], 3), device=comfy_adapter.output_device())
        progress = comfy_adapter.StepProgress(count)
        crops = (images_to_engine(frames[start : start + FRAME_CHUNK]) for start in range(0, count, FRAME_CHUNK))
        earlier = None
        if frames_so_far is not None:
            earlier = (images_to_engine(frames_so_far[start : start + FRAME_CHUNK]) for start in range(0, len(frames_so_far), FRAME_CHUNK))
        done = 0
        for pasted in paste_onto(picture, crops, paste, earlier):
            output[done : done + len(pasted)] = engine_to_images(pasted)
            done += len(pasted)
            progress.engine_callback("paste-back", done, count)
        return io.NodeOutput(output)
