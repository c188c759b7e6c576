"""What drives a face: a performer of a driving video (tracked, then encoded as it streams) or a
performer of a motion file (encoded once, earlier). Both give the same motion-encoder trunk
features, and :func:`~xportrait2_core.identity_filtered_motion.tokens_in_batches` turns either into
the denoiser's tokens the same way, so a video animated from a motion file equals, bit for bit, the
video animated from the take it was made of."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

import torch

from ..identity_filtered_motion import encode_features
from ..media.driving_take import DrivingTake, motion_crops
from ..media.face_track import LARGEST_PERFORMER, DrivingCropPlan, Performer
from ..models.motion_encoder import MotionEncoder
from ..progress import ProgressFn
from .file import Motion, MotionFileError, check_encoder, encoder_fingerprint, load_motion


def encode_take_features(
    encoder: MotionEncoder, take: DrivingTake, plan: DrivingCropPlan, progress: Optional[ProgressFn] = None
) -> torch.Tensor:
    """Second pass over a tracked take: its face crops turned into trunk features (F, 512) chunk by
    chunk as they are cut (only the features are kept)."""
    return torch.cat([encode_features(encoder, crops) for crops in motion_crops(take, plan, progress)])


@dataclass(frozen=True)
class TakeDriver:
    """A performer of a driving video, tracked."""

    take: DrivingTake
    plan: DrivingCropPlan

    @property
    def fps(self) -> Fraction:
        return self.take.info.fps

    @property
    def frame_count(self) -> int:
        return self.plan.frame_count

    def features(self, encoder: MotionEncoder, progress: Optional[ProgressFn] = None) -> torch.Tensor:
        return encode_take_features(encoder, self.take, self.plan, progress)


@dataclass(frozen=True)
class MotionFileDriver:
    """A performer of a motion file (``max_frames`` applied)."""

    motion: Motion
    performer: int
    name: str
    max_frames: Optional[int] = None

    @property
    def fps(self) -> Fraction:
        return self.motion.fps

    @property
    def frame_count(self) -> int:
        return min(self.motion.frame_count, self.max_frames or self.motion.frame_count)

    def features(self, encoder: MotionEncoder, progress: Optional[ProgressFn] = None) -> torch.Tensor:
        check_encoder(self.motion, encoder, self.name)
        return self.motion.performer(self.performer, self.name)[: self.frame_count]


def file_performer(performer: Performer, name: str) -> int:
    """Which of a motion file's performers a drive's choice names: ``largest`` is the first one
    stored (the one the file was made for), an index one of those stored in face order."""
    if performer == LARGEST_PERFORMER:
        return 0
    if isinstance(performer, int):
        return performer
    raise MotionFileError(f"{name} holds encoded performers: choose one by its index, not by a box")


def open_motion_driver(path: Path, performer: Performer, max_frames: Optional[int] = None) -> MotionFileDriver:
    motion = load_motion(path)
    driver = MotionFileDriver(motion, file_performer(performer, path.name), path.name, max_frames)
    motion.performer(driver.performer, path.name)  # refuse a missing performer before any model loads
    return driver


def motion_of_take(
    encoder: MotionEncoder, take: DrivingTake, plans: list[DrivingCropPlan], progress: Optional[ProgressFn] = None
) -> Motion:
    """A take's tracked performers, encoded, as a :class:`Motion` to save."""
    performers = tuple(encode_take_features(encoder, take, plan, progress) for plan in plans)
    frames = min(len(features) for features in performers)
    return Motion(tuple(f[:frames] for f in performers), take.info.fps, encoder_fingerprint(encoder), (take.name,))


class EncodedTakes:
    """The motion of takes already tracked and encoded in this process, by take file (its path,
    modification time and size), performer and ``max_frames``: in a batch, a take that drives many
    portraits is tracked and encoded once, and every later job reuses its motion (the same
    features, so the same video)."""

    def __init__(self) -> None:
        self._motions: dict[tuple, Motion] = {}

    @staticmethod
    def key(take: Path, performer: Performer, max_frames: Optional[int]) -> Optional[tuple]:
        if not isinstance(performer, (str, int)):
            return None  # a box chosen per run is not a reusable choice
        stat = take.stat()
        return str(take.resolve()), stat.st_mtime_ns, stat.st_size, performer, max_frames

    def get(self, key: Optional[tuple]) -> Optional[Motion]:
        return None if key is None else self._motions.get(key)

    def put(self, key: Optional[tuple], motion: Motion) -> None:
        if key is not None:
            self._motions[key] = motion
