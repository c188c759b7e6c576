"""Face track & crop (driving): one fixed-size face crop per driving frame, and the track."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..xportrait2_core.faces import crop_driving_frames, plan_driving_crops, track_face
from . import comfy_adapter
from .types import CATEGORY, DrivingTrack, XP2DrivingTrack, engine_to_images

FRAME_CHUNK = 16


class XPortrait2DrivingFaceTrack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2DrivingFaceTrack",
            display_name="X-Portrait 2 Face Track & Crop (driving)",
            category=CATEGORY,
            description=(
                "Follows the driving video's face through all frames (IMAGE batch from any video loader), bridges "
                "frames without a detection, smooths the track and cuts a 224x224 motion crop per frame."
            ),
            inputs=[io.Image.Input("frames", tooltip="the driving video as an IMAGE batch, at least 2 frames")],
            outputs=[
                io.Image.Output(display_name="face_crops"),
                XP2DrivingTrack.Output(display_name="driving_track"),
            ],
        )

    @classmethod
    def execute(cls, frames: torch.Tensor) -> io.NodeOutput:
        count = frames.shape[0]
        if count < 2:
            raise ValueError(
                f"the driving video has {count} frame: X-Portrait 2 transfers motion from a video, give it at "
                "least 2 frames (check the frame cap / skip settings of the video loader)"
            )

        def chunks():
            return (frames[start : start + FRAME_CHUNK, ..., :3] for start in range(0, count, FRAME_CHUNK))

        track = track_face(chunks(), comfy_adapter.face_detector())
        plan = plan_driving_crops(track)
        crops = torch.cat(list(crop_driving_frames(chunks(), plan)))
        return io.NodeOutput(engine_to_images(crops), DrivingTrack(plan, track.found))
