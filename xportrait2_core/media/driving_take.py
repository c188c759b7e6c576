"""A driving take read as a stream: however long the video, only what is small per frame (the
face track, motion features or tokens, latents) is kept for all of it.

Every stage reads the video again from the start, in chunks of
:data:`~xportrait2_core.models.motion_encoder.MOTION_BATCH` frames: the
face track first (it needs all frames before it can smooth), then the motion crops. The command line
and the ComfyUI nodes both go through here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Optional

import torch

from ..models.motion_encoder import MOTION_BATCH
from ..progress import ProgressFn, report
from .face_detector import FaceDetectorRunner
from .face_track import (
    LARGEST_PERFORMER,
    DrivingCropPlan,
    FaceTrack,
    Performer,
    crop_driving_frames,
    describe_missed,
    track_face,
)
from .images import MediaError
from .video_reader import VideoInfo, VideoSource, probe_video, stream_frames

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrivingTake:
    """A driving video that each stage reads afresh: ``open_source`` gives a path or a rewound
    binary stream every time it is called."""

    open_source: Callable[[], VideoSource]
    info: VideoInfo
    name: str
    max_frames: Optional[int] = None

    @classmethod
    def open(cls, open_source: Callable[[], VideoSource], name: str, max_frames: Optional[int] = None) -> DrivingTake:
        """Check the video before any work starts (no video stream, damaged, a still image, ...)."""
        if max_frames is not None and max_frames < 2:
            raise MediaError("max_frames must be at least 2")
        info = probe_video(open_source())
        take = cls(open_source, info, name, max_frames)
        if take.expected_frames < 2:
            raise MediaError(f"{name} has {info.frame_count} frame(s): a driving video needs at least 2")
        return take

    @property
    def expected_frames(self) -> int:
        """What the container declares (the face track counts the frames for real)."""
        if self.max_frames is None:
            return self.info.frame_count
        return min(self.max_frames, self.info.frame_count)

    def chunks(self) -> Iterator[torch.Tensor]:
        """The frames, uint8 ``(N, H, W, 3)`` chunks of at most :data:`MOTION_BATCH` (the take was
        probed when it was opened, so it is not probed again)."""
        return stream_frames(self.open_source(), self.max_frames, MOTION_BATCH)


def counted(
    chunks: Iterable[torch.Tensor], stage: str, total: int, progress: Optional[ProgressFn]
) -> Iterator[torch.Tensor]:
    """Pass chunks through, reporting the frames done after each (the total grows if it was low)."""
    done = 0
    for chunk in chunks:
        yield chunk
        done += len(chunk)
        report(progress, stage, done, max(total, done))


def track_take(
    take: DrivingTake,
    detector: FaceDetectorRunner,
    progress: Optional[ProgressFn] = None,
    performer: Performer = LARGEST_PERFORMER,
) -> FaceTrack:
    """First pass: the followed face (``performer``) in every frame (missed frames stay NaN until
    planning bridges them)."""
    chunks = counted(take.chunks(), "detecting faces", take.expected_frames, progress)
    track = track_face(chunks, detector, take.name, performer)
    missed = describe_missed(track.found, float(take.info.fps))
    if missed:
        logger.info("%s: %s", take.name, missed)
    return track


def motion_crops(
    take: DrivingTake, plan: DrivingCropPlan, progress: Optional[ProgressFn] = None
) -> Iterator[torch.Tensor]:
    """Second pass: the motion crops ``(N, 3, 224, 224)`` chunk by chunk, for the caller to encode
    right away."""
    return counted(crop_driving_frames(take.chunks(), plan), "encoding motion", plan.frame_count, progress)
