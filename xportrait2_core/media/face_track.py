"""Following one face through a driving video and planning its crops (spec 6.3, improved).

Driving videos are handled in two streamed passes so a long video never sits in memory:
:func:`track_face` detects chunk by chunk and keeps only one box per frame,
:func:`plan_driving_crops` turns that small track into smoothed crop boxes, and
:func:`crop_driving_frames` cuts the crops in a second pass over the frames. Deliberate changes
from the official preprocessing: detection on the whole frame (not its left square), frames
without a detection are bridged from their neighbours (the official code crashes), with several
faces the chosen one is followed (the detection of similar size nearest the track), and driving crops keep exactly the same size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from einops import rearrange

from ..models.motion_encoder import CROP_SIZE
from .crops import FaceBox, frame_batch, frames_to_images, resize_like_pillow, scaled_face_square
from .face_choice_box import FaceChoiceBox, face_at_box
from .face_detector import FaceDetectorRunner, FaceNotFoundError, left_to_right, most_prominent
from .images import MediaError

# How far (in face sizes) the followed face may be from where it was last seen: the base plus
# this much per frame since then.
FOLLOW_BASE_DISTANCE = 0.5
FOLLOW_DISTANCE_PER_FRAME = 0.25
# A detection whose size differs from the followed face's by more than this factor is not it
# (the test videos' faces change size by under 5 % between frames).
FOLLOW_SIZE_RATIO = 1.5
TRACK_SMOOTHING_SIGMA = 5.0
# Which driving face to follow, chosen at the first frame that shows faces: the most prominent
# one, an index counted left to right, the face a box points at, or the face the box of that
# frame points at (a tuple of one box per frame; None where a frame has none).
LARGEST_PERFORMER = "largest"
Performer = Union[str, int, FaceChoiceBox, tuple[Union[FaceChoiceBox, None], ...]]
TRACK_SMOOTHING_RADIUS = 20


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """Centres ``(F, 2)`` (x, y) of ``(F, 4)`` boxes."""
    return (boxes[:, :2] + boxes[:, 2:4]) / 2


def sides(boxes: torch.Tensor) -> torch.Tensor:
    """The longer side of each of ``(F, 4+)`` boxes."""
    return torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


class _FaceFollower:
    """Chooses, frame after frame, the detection that continues the followed face.

    ``performer`` picks the face at the first frame with faces: ``"largest"`` (the most
    prominent) or an index counted left to right."""

    def __init__(self, performer: Performer = LARGEST_PERFORMER, name: str = "the driving video") -> None:
        self._performer = performer
        self._name = name
        self._frame = -1
        self._centre: torch.Tensor | None = None
        self._side = 0.0
        self._frames_since_seen = 0

    def _first(self, faces: torch.Tensor) -> torch.Tensor:
        if self._performer == LARGEST_PERFORMER:
            return most_prominent(faces)
        if isinstance(self._performer, (FaceChoiceBox, tuple)):
            where = f"frame {self._frame} of {self._name}, the first frame with faces"
            return faces[face_at_box(faces, self._box_at_first_faces(), where)]
        if not 0 <= self._performer < len(faces):
            shown = "1 face" if len(faces) == 1 else f"{len(faces)} faces"
            raise FaceNotFoundError(
                f"performer {self._performer} not found in {self._name}: frame {self._frame}, the first frame "
                f"with faces, shows {shown} (performers 0 to {len(faces) - 1}, left to right)"
            )
        return left_to_right(faces)[self._performer]

    def _box_at_first_faces(self) -> FaceChoiceBox:
        if isinstance(self._performer, FaceChoiceBox):
            return self._performer
        box = self._performer[self._frame] if self._frame < len(self._performer) else None
        if box is None:
            raise FaceNotFoundError(
                f"the performer's boxes give none for frame {self._frame} of {self._name}, the first frame with "
                f"faces (they cover {len(self._performer)} frames): give one box, or one for that frame"
            )
        return box

    def follow(self, faces: torch.Tensor) -> torch.Tensor | None:
        self._frame += 1
        self._frames_since_seen += 1
        if len(faces) == 0:
            return None
        if self._centre is None:
            chosen = self._first(faces)
        else:
            # A face much larger or smaller than the followed one is someone else (another
            # performer coming closer), even where it is nearest.
            ratios = sides(faces) / self._side
            alike = (ratios <= FOLLOW_SIZE_RATIO) & (ratios >= 1 / FOLLOW_SIZE_RATIO)
            distances = (box_centres(faces) - self._centre).norm(dim=1).masked_fill(~alike, math.inf)
            nearest = int(distances.argmin())
            # Between frames a face moves a small fraction of its size (at most 0.12 in the
            # 12 fps test video); a detection farther than the allowance, which grows while the
            # face is missing, is someone or something else, and the followed face counts as missed.
            allowance = self._side * (FOLLOW_BASE_DISTANCE + FOLLOW_DISTANCE_PER_FRAME * self._frames_since_seen)
            if distances[nearest] > allowance:
                return None
            chosen = faces[nearest]
        self._centre = box_centres(chosen[None])[0]
        self._side = float(max(chosen[2] - chosen[0], chosen[3] - chosen[1]))
        self._frames_since_seen = 0
        return chosen


@dataclass(frozen=True)
class FaceTrack:
    """The followed face's detection in every frame of a video; rows of NaN where it was missed."""

    boxes: torch.Tensor  # (F, 4) left, top, right, bottom in frame pixels
    scores: torch.Tensor  # (F,)
    frame_size: tuple[int, int]  # (height, width)

    @property
    def frame_count(self) -> int:
        return len(self.boxes)

    @property
    def found(self) -> torch.Tensor:
        """``(F,)`` bool: frames where the face was detected."""
        return ~self.boxes.isnan().any(dim=1)


def track_face(
    frame_chunks: Iterable[torch.Tensor],
    detector: FaceDetectorRunner,
    name: str = "the driving video",
    performer: Performer = LARGEST_PERFORMER,
) -> FaceTrack:
    """Detect faces in chunks of channels-last frames (as :func:`~xportrait2_core.media.video_reader.iter_frames`
    yields them) and follow one face through them: the ``performer`` of the first frame with a
    face (the largest confident one, or an index left to right), then always the detection of a
    similar size nearest to where it was. Only the track is kept.

    Raises :class:`FaceNotFoundError` when no frame shows a face, or not the chosen performer.
    """
    follower = _FaceFollower(performer, name)
    missed = torch.full((5,), math.nan)
    rows: list[torch.Tensor] = []
    frame_size: tuple[int, int] | None = None
    for chunk in map(frame_batch, frame_chunks):
        if frame_size is not None and tuple(chunk.shape[1:3]) != frame_size:
            raise MediaError(f"{name}: frame size changes from {frame_size} to {tuple(chunk.shape[1:3])}")
        frame_size = tuple(chunk.shape[1:3])
        for faces in detector.detect_in_frames(chunk):
            chosen = follower.follow(faces)
            rows.append(missed if chosen is None else chosen)
    if not rows:
        raise MediaError(f"{name} has no frames")
    track = torch.stack(rows)
    if track[:, 0].isnan().all():
        raise FaceNotFoundError(
            f"no face found in any of the {len(rows)} frames of {name}: the driving video must show "
            "one face clearly (frontal or three-quarter view)"
        )
    return FaceTrack(track[:, :4].contiguous(), track[:, 4].contiguous(), frame_size)


def missed_stretches(found: torch.Tensor, fps: float) -> list[tuple[float, float]]:
    """The stretches of a track without its face, as (start, end) in seconds of the video: a
    stretch of frames i..j covers i / fps to (j + 1) / fps."""
    stretches: list[tuple[float, float]] = []
    start = None
    for index, seen in enumerate([*found.tolist(), True]):
        if not seen and start is None:
            start = index
        elif seen and start is not None:
            stretches.append((start / fps, index / fps))
            start = None
    return stretches


def describe_missed(found: torch.Tensor, fps: float) -> str | None:
    """One line saying when the face was not seen (bridged from the frames around), or None."""
    stretches = missed_stretches(found, fps)
    if not stretches:
        return None
    missed = int((~found).sum())
    shown = ", ".join(f"{start:.2f}-{end:.2f} s" for start, end in stretches[:8])
    more = f" and {len(stretches) - 8} more" if len(stretches) > 8 else ""
    return f"no face in {missed} of {len(found)} frames ({shown}{more}): bridged from the frames around them"


def bridge_missing(values: torch.Tensor) -> torch.Tensor:
    """Fill NaN rows of ``(F, C)`` values by linear interpolation between the nearest rows on
    either side; leading/trailing gaps copy the nearest row. Needs at least one complete row."""
    known_frames = (~values.isnan().any(dim=1)).nonzero().squeeze(1)
    if len(known_frames) == 0:
        raise MediaError("cannot bridge a track with no known frame")
    frames = torch.arange(len(values))
    after = torch.searchsorted(known_frames, frames).clamp(max=len(known_frames) - 1)
    before = (after - (known_frames[after] > frames).long()).clamp(min=0)
    start, end = known_frames[before], known_frames[after]
    span = (end - start).clamp(min=1)
    weight = ((frames - start).clamp(min=0) / span).clamp(max=1.0).to(values.dtype).unsqueeze(1)
    return torch.lerp(values[start], values[end], weight)


def _symmetric_indices(count: int, radius: int) -> torch.Tensor:
    # scipy's "reflect" boundary (d c b a | a b c d | d c b a), repeated for signals shorter
    # than the filter radius.
    positions = torch.arange(-radius, count + radius) % (2 * count)
    return torch.where(positions < count, positions, 2 * count - 1 - positions)


def gaussian_smooth(
    values: torch.Tensor, sigma: float = TRACK_SMOOTHING_SIGMA, radius: int = TRACK_SMOOTHING_RADIUS
) -> torch.Tensor:
    """Smooth ``(F, C)`` values along frames with a normalised Gaussian (``scipy.ndimage.gaussian_filter1d``
    with mode "reflect" and the given radius)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = (weights / weights.sum()).to(values.dtype)
    padded = values[_symmetric_indices(len(values), radius)]
    signals = rearrange(padded, "f c -> c 1 f")
    return rearrange(F.conv1d(signals, weights.view(1, 1, -1)), "c 1 f -> f c")


@dataclass(frozen=True)
class DrivingCropPlan:
    """Where to cut every driving frame: a fixed-size box around the smoothed face centre."""

    crop_boxes: torch.Tensor  # (F, 4) int64 left, top, right, bottom, all inside the frame
    centres: torch.Tensor  # (F, 2) smoothed face centres (x, y)
    crop_size: tuple[int, int]  # (width, height), even numbers
    frame_size: tuple[int, int]  # (height, width)

    @property
    def frame_count(self) -> int:
        return len(self.crop_boxes)


def _fixed_crop_size(first_box: torch.Tensor, frame_size: tuple[int, int]) -> tuple[int, int]:
    square = scaled_face_square(FaceBox(*first_box.tolist()), *frame_size)
    height, width = frame_size
    even_width = max(2, min(round(square.width) // 2 * 2, width))
    even_height = max(2, min(round(square.height) // 2 * 2, height))
    return even_width, even_height


def _boxes_around(centres: torch.Tensor, crop_size: tuple[int, int], frame_size: tuple[int, int]) -> torch.Tensor:
    # Round the corner, not each edge, so every crop has exactly the same size, then shift the
    # box back inside the frame (the official code shifts too, but truncates each edge).
    size = torch.tensor(crop_size, dtype=centres.dtype)
    limit = torch.tensor([frame_size[1] - crop_size[0], frame_size[0] - crop_size[1]])
    corners = torch.round(centres - size / 2).long()
    corners = torch.minimum(corners.clamp(min=0), limit)
    return torch.cat([corners, corners + torch.tensor(crop_size)], dim=1)


def plan_driving_crops(
    track: FaceTrack, sigma: float = TRACK_SMOOTHING_SIGMA, radius: int = TRACK_SMOOTHING_RADIUS
) -> DrivingCropPlan:
    """Turn a face track into crop boxes: missed frames bridged, the centres Gaussian-smoothed
    over time, the size fixed by the first frame's face (the 1.1 square, even sides)."""
    boxes = bridge_missing(track.boxes)
    crop_size = _fixed_crop_size(boxes[0], track.frame_size)
    centres = gaussian_smooth(box_centres(boxes), sigma, radius)
    crop_boxes = _boxes_around(centres, crop_size, track.frame_size)
    return DrivingCropPlan(crop_boxes, centres, crop_size, track.frame_size)


def crop_driving_frames(
    frame_chunks: Iterable[torch.Tensor], plan: DrivingCropPlan, size: int | None = CROP_SIZE
) -> Iterator[torch.Tensor]:
    """Second pass over the same frames: yields, per chunk, the face crops ``(N, 3, size, size)``
    float in ``[0, 1]`` (``size=None``: the plan's native crop size)."""
    start = 0
    for chunk in map(frame_batch, frame_chunks):
        end = start + len(chunk)
        if end > plan.frame_count:
            raise MediaError(f"more frames ({end}) than the face track covers ({plan.frame_count})")
        boxes = plan.crop_boxes[start:end].tolist()
        # Each crop is cut from the channels-last frame first, then made float: a chunk of 4K frames
        # is never held in float.
        crops = torch.cat([
            frames_to_images(frame[top:bottom, left:right]) for frame, (left, top, right, bottom) in zip(chunk, boxes)
        ])
        yield crops if size is None else resize_like_pillow(crops, (size, size))
        start = end
