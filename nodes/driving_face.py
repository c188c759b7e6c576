"""Face track & crop (driving): the followed face in every driving frame, from an IMAGE batch
(short clips) or from a VIDEO that stays a file (long takes)."""

from __future__ import annotations

from pathlib import Path

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.media.driving_take import DrivingTake, track_take
from ..xportrait2_core.media.face_track import (
    LARGEST_PERFORMER,
    Performer,
    bridge_missing,
    crop_driving_frames,
    plan_driving_crops,
    track_face,
)
from ..xportrait2_core.models.motion_encoder import MOTION_BATCH
from . import comfy_adapter
from .core_boxes import core_track, face_box_inputs, face_box_outputs, performer_choice, with_face_boxes
from .types import LARGEST_INDEX, CATEGORY, DrivingTrack, DrivingVideo, XP2DrivingTrack, XP2DrivingVideo, engine_to_images


def _performer_input() -> io.Int.Input:
    return io.Int.Input(
        "performer", default=LARGEST_INDEX, min=LARGEST_INDEX, max=99, optional=True,
        tooltip="whom to follow: the face counted from 0 left to right at the first frame that shows faces; -1: the "
        "largest. That performer is tracked through the take, whoever else comes closer or crosses",
    )


def _performer_box_inputs() -> list:
    return face_box_inputs(
        "optional: follow the face this box points at (one that surrounds it or lies on it) at the first frame that "
        "shows faces, instead of performer; a list of boxes per frame is read at that frame (its first box)"
    )


def _track_box_outputs() -> list:
    return face_box_outputs(
        "face_track", "the followed face's box in every frame (bridged where it was not detected), for core box nodes"
    )


def _performer(index: int, face_box) -> Performer:
    if face_box is not None:
        return performer_choice(face_box)
    return LARGEST_PERFORMER if index == LARGEST_INDEX else index


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
            inputs=[
                io.Image.Input("frames", tooltip="the driving video as an IMAGE batch, at least 2 frames"),
                _performer_input(),
                *_performer_box_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="face_crops"),
                XP2DrivingTrack.Output(display_name="driving_track"),
                *_track_box_outputs(),
            ],
        )

    @classmethod
    def execute(cls, frames: torch.Tensor, performer: int = LARGEST_INDEX, face_box=None) -> io.NodeOutput:
        count = frames.shape[0]
        _require_two_frames(count)

        def chunks():
            return (frames[start : start + MOTION_BATCH, ..., :3] for start in range(0, count, MOTION_BATCH))

        track = track_face(chunks(), comfy_adapter.face_detector(), performer=_performer(performer, face_box))
        plan = plan_driving_crops(track)
        crops = torch.cat(list(crop_driving_frames(chunks(), plan)))
        outputs = (engine_to_images(crops), DrivingTrack(plan, track.found))
        return io.NodeOutput(*with_face_boxes(outputs, core_track(bridge_missing(track.boxes))))


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
                _performer_input(),
                *_performer_box_inputs(),
            ],
            outputs=[XP2DrivingVideo.Output(display_name="driving_video"), *_track_box_outputs()],
        )

    @classmethod
    def execute(cls, video, max_frames: int, performer: int = LARGEST_INDEX, face_box=None) -> io.NodeOutput:
        # A path, or (for a VIDEO made in memory) one BytesIO that every pass rewinds: asking
        # again would encode such a video again.
        source = video.get_stream_source()
        name = Path(source).name if isinstance(source, str) else "the driving VIDEO"
        take = DrivingTake.open(lambda: source, name, max_frames or None)
        progress = comfy_adapter.StepProgress(take.expected_frames)
        track = track_take(take, comfy_adapter.face_detector(), progress.engine_callback, _performer(performer, face_box))
        _require_two_frames(track.frame_count)
        driving_video = DrivingVideo(take, DrivingTrack(plan_driving_crops(track), track.found))
        return io.NodeOutput(*with_face_boxes((driving_video,), core_track(bridge_missing(track.boxes))))
