"""Face track & crop (driving): the followed face in every driving frame, from an IMAGE batch
(short clips) or from a VIDEO that stays a file (long takes)."""

from __future__ import annotations

from pathlib import Path

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.media.driving_take import DrivingTake, track_take
from ..xportrait2_core.media.face_track import crop_driving_frames, plan_driving_crops, track_face
from ..xportrait2_core.models.motion_encoder import MOTION_BATCH
from . import comfy_adapter
from .types import CATEGORY, DrivingTrack, DrivingVideo, XP2DrivingTrack, XP2DrivingVideo, engine_to_images


def _require_two_frames(count: int) -> None:
    if count < 2:
        raise ValueError(
            f"the driving video has {count} frame: X-Portrait 2 transfers motion from a video, give it at "
            "least 2 frames (check the frame cap / skip settings of the video loader)"
        )


class XPortrait2DrivingFaceTrack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2DrivingFaceTrack",
            display_name="X-Portrait 2 Face Track & Crop (driving)",
            category=CATEGORY,
            description=(
                "Follows the driving video's face through all frames (IMAGE batch from any video loader), bridges "
                "frames without a detection, smooths the track and cuts a 224x224 motion crop per frame. For long "
                "takes use Face Track (driving VIDEO), which never holds the frames."
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
        _require_two_frames(count)

        def chunks():
            return (frames[start : start + MOTION_BATCH, ..., :3] for start in range(0, count, MOTION_BATCH))

        track = track_face(chunks(), comfy_adapter.face_detector())
        plan = plan_driving_crops(track)
        crops = torch.cat(list(crop_driving_frames(chunks(), plan)))
        return io.NodeOutput(engine_to_images(crops), DrivingTrack(plan, track.found))


class XPortrait2DrivingVideoTrack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2DrivingVideoTrack",
            display_name="X-Portrait 2 Face Track (driving VIDEO)",
            category=CATEGORY,
            description=(
                "The long-take form of Face Track & Crop: reads the VIDEO (Load Video or any VIDEO output) in chunks "
                "of 16 frames and keeps only the face track, so memory stays flat however long the take is. Motion "
                "Encode (driving VIDEO) cuts the crops from the same file."
            ),
            inputs=[
                io.Video.Input("video", tooltip="the driving take, at least 2 frames"),
                io.Int.Input(
                    "max_frames", default=0, min=0, max=1_000_000,
                    tooltip="animate only the first N frames (0: the whole take)",
                ),
            ],
            outputs=[XP2DrivingVideo.Output(display_name="driving_video")],
        )

    @classmethod
    def execute(cls, video, max_frames: int) -> io.NodeOutput:
        # A path, or (for a VIDEO made in memory) one BytesIO that every pass rewinds: asking
        # again would encode such a video again.
        source = video.get_stream_source()
        name = Path(source).name if isinstance(source, str) else "the driving VIDEO"
        take = DrivingTake.open(lambda: source, name, max_frames or None)
        progress = comfy_adapter.StepProgress(take.expected_frames)
        track = track_take(take, comfy_adapter.face_detector(), progress.engine_callback)
        _require_two_frames(track.frame_count)
        return io.NodeOutput(DrivingVideo(take, DrivingTrack(plan_driving_crops(track), track.found)))
