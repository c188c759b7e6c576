"""Blending animated faces back into the full-resolution portrait, one or many.

The generated square's background is not the photo's, so blending the whole square in (the
``rectangle`` blend, :func:`~xportrait2_core.media.paste_back.paste_back`) leaves a box-shaped seam
wherever they differ. The ``head`` blend keeps only an ellipse around the head, set from the
detector's box and five landmarks, grown to take in hair and feathered, and first shifts the
animated crop's colour to the portrait's in the ring where the two are mixed.

Several faces: each face's weight is cut where another face's region begins, along the
perpendicular bisector of the two face centres and feathered there, so no face's background
covers another face. Faces are added one after another as ``out += w_k * (face_k - picture)``:
the weights of two faces sum to at most 1 at their split, so nothing of the photo shows through
it, and each face needs only its own decoded chunk in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from .crops import CropBox, FaceBox, resize_like_pillow
from .images import MediaError
from .source_crops import reference_image_box

HEAD = "head"
RECTANGLE = "rectangle"
BLENDS = (HEAD, RECTANGLE)

# The head ellipse around a YuNet box (which spans brows to chin): this much wider and taller
# than the box, its centre lifted by this fraction of the box height to take in the hair.
HEAD_WIDTH_GROWTH = 1.35
HEAD_HEIGHT_GROWTH = 1.45
HEAD_LIFT = 0.12
# The head mask fades out between the ellipse and the ellipse grown by this fraction.
HEAD_FEATHER = 0.3
# Where two faces' regions meet, the split between them is feathered over this fraction of
# the distance between their centres.
SPLIT_FEATHER = 0.15


@dataclass(frozen=True)
class HeadEllipse:
    """An ellipse in picture pixels: centre, semi-axes, and rotation (radians, the eye line's)."""

    centre_x: float
    centre_y: float
    semi_width: float
    semi_height: float
    angle: float


def head_ellipse(detection: torch.Tensor) -> HeadEllipse:
    """The head around one ``(15,)`` detection (box, score, landmarks)."""
    left, top, right, bottom = detection[:4].tolist()
    eyes_x, eyes_y, nose_x, nose_y, mouth_x, mouth_y = _landmark_midpoints(detection)
    angle = math.atan2(float(detection[8] - detection[6]), float(detection[7] - detection[5]))
    width, height = right - left, bottom - top
    # Horizontally the face's own axis (between eyes and mouth) follows a turned head better
    # than the box centre; vertically the box spans the face.
    centre_x = (eyes_x + mouth_x) / 2
    centre_y = (top + bottom) / 2
    lift = HEAD_LIFT * height
    return HeadEllipse(
        centre_x + lift * math.sin(angle),
        centre_y - lift * math.cos(angle),
        width / 2 * HEAD_WIDTH_GROWTH,
        height / 2 * HEAD_HEIGHT_GROWTH,
        angle,
    )


def _landmark_midpoints(detection: torch.Tensor) -> tuple[float, ...]:
    landmarks = detection[5:15].view(5, 2)
    eyes = landmarks[:2].mean(dim=0)
    mouth = landmarks[3:5].mean(dim=0)
    return (*eyes.tolist(), *landmarks[2].tolist(), *mouth.tolist())


def _smoothstep(linear: torch.Tensor) -> torch.Tensor:
    linear = linear.clamp(0.0, 1.0)
    return linear * linear * (3 - 2 * linear)


def _pixel_grid(window: CropBox) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres ``(h, 1)`` and ``(1, w)`` of a window of the picture."""
    ys = torch.arange(window.top, window.bottom, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(window.left, window.right, dtype=torch.float32)[None, :] + 0.5
    return ys, xs


def _elliptic_radius(ellipse: HeadEllipse, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """1 on the ellipse, below 1 inside it."""
    dx, dy = xs - ellipse.centre_x, ys - ellipse.centre_y
    cos, sin = math.cos(ellipse.angle), math.sin(ellipse.angle)
    along = (dx * cos + dy * sin) / ellipse.semi_width
    across = (-dx * sin + dy * cos) / ellipse.semi_height
    return torch.sqrt(along * along + across * across)


def _rectangle_weights(box: CropBox, feather: float, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """:func:`~xportrait2_core.media.paste_back.feather_mask` of ``box`` evaluated on any pixel grid."""
    ramp = feather * min(box.height, box.width)
    inside_y = torch.minimum(ys - box.top, box.bottom - ys)
    inside_x = torch.minimum(xs - box.left, box.right - xs)
    inside = torch.minimum(inside_y, inside_x)
    if ramp <= 0:
        return (inside > 0).float()
    return _smoothstep(inside / ramp)


@dataclass(frozen=True)
class FaceRegion:
    """Where one face of the portrait is animated and how its pixels are blended back."""

    box: CropBox  # the generated square's place in the picture (the reference image's box)
    head: HeadEllipse

    @property
    def centre(self) -> tuple[float, float]:
        return self.head.centre_x, self.head.centre_y


def face_regions(detections: torch.Tensor, height: int, width: int) -> list[FaceRegion]:
    """The region of every ``(N, 15)`` detection of an ``height`` x ``width`` portrait."""
    regions = []
    for detection in detections:
        left, top, right, bottom, score = detection[:5].tolist()
        box = reference_image_box(FaceBox(left, top, right, bottom, score), height, width)
        regions.append(FaceRegion(box, head_ellipse(detection)))
    return regions


def own_weights(region: FaceRegion, blend: str, feather: float, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """A face's blend weights on a pixel grid, before it is split from its neighbours."""
    rectangle = _rectangle_weights(region.box, feather, ys, xs)
    if blend == RECTANGLE:
        return rectangle
    head = _smoothstep((1 + HEAD_FEATHER - _elliptic_radius(region.head, ys, xs)) / HEAD_FEATHER)
    # The square's own feather keeps a head reaching past the square from ending in a hard edge.
    return head * rectangle


def _split_towards(mine: tuple[float, float], other: tuple[float, float], ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """1 on my side of the bisector between two centres, 0 on the other's, feathered between."""
    ux, uy = other[0] - mine[0], other[1] - mine[1]
    distance = math.hypot(ux, uy)
    if distance == 0:
        return torch.full(torch.broadcast_shapes(ys.shape, xs.shape), 0.5)
    middle_x, middle_y = (mine[0] + other[0]) / 2, (mine[1] + other[1]) / 2
    towards_other = ((xs - middle_x) * ux + (ys - middle_y) * uy) / distance
    return _smoothstep(0.5 - towards_other / (SPLIT_FEATHER * distance))


def visible_window(box: CropBox, height: int, width: int) -> CropBox:
    """The part of a box inside an ``height`` x ``width`` picture."""
    window = CropBox(max(box.left, 0), max(box.top, 0), min(box.right, width), min(box.bottom, height))
    if window.left >= window.right or window.top >= window.bottom:
        raise MediaError(f"crop box {box} does not overlap the {width}x{height} picture")
    return window


def blend_weights(
    regions: Sequence[FaceRegion], index: int, blend: str, feather: float, height: int, width: int
) -> tuple[torch.Tensor, CropBox]:
    """Face ``index``'s weights ``(1, h, w)`` over its visible window, split from every other face
    of ``regions`` (the portrait's faces, animated or not) where their regions overlap."""
    if blend not in BLENDS:
        raise MediaError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    if not 0.0 <= feather <= 0.5:
        raise MediaError(f"feather must be between 0 and 0.5 (a fraction of the crop side), got {feather}")
    region = regions[index]
    window = visible_window(region.box, height, width)
    ys, xs = _pixel_grid(window)
    weights = own_weights(region, blend, feather, ys, xs)
    for other_index, other in enumerate(regions):
        if other_index == index:
            continue
        theirs = own_weights(other, blend, feather, ys, xs)
        weights = weights * (1 - theirs * (1 - _split_towards(region.centre, other.centre, ys, xs)))
    return weights.unsqueeze(0), window


def colour_matched(placed: torch.Tensor, background: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Shift each frame's colour so that its mean equals the portrait's in the ring where the
    two are mixed (``0 < weights < 1``). ``placed`` and ``background`` are ``(N, 3, h, w)``."""
    ring = (weights > 0) & (weights < 1)
    if not ring.any():
        return placed
    ring_weights = ring.to(placed.dtype)
    count = ring_weights.sum()
    shift = ((background - placed) * ring_weights).sum(dim=(-2, -1), keepdim=True) / count
    return (placed + shift).clamp(0.0, 1.0)


@dataclass(frozen=True)
class FacePaste:
    """How one animated face goes back: its blend weights over a window of the picture."""

    weights: torch.Tensor  # (1, h, w)
    window: CropBox  # the visible part of ``box``, in picture pixels
    box: CropBox  # the generated square's place in the picture
    colour_match: bool

    @classmethod
    def plan(
        cls, regions: Sequence[FaceRegion], index: int, height: int, width: int, blend: str = HEAD, feather: float = 0.1
    ) -> FacePaste:
        weights, window = blend_weights(regions, index, blend, feather, height, width)
        return cls(weights, window, regions[index].box, blend == HEAD)

    def add(self, frames: torch.Tensor, picture: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        """Add this face to ``frames`` ``(N, 3, H, W)`` (the picture, or earlier faces already
        added), in place: ``frames += w * (face - picture)`` over the window. ``crops``
        ``(N, 3, s, s)`` are the animated squares at any size. Returns ``frames``."""
        crops = crops.to(picture.device, picture.dtype)
        placed = resize_like_pillow(crops, (self.box.height, self.box.width))
        rows = slice(self.window.top - self.box.top, self.window.bottom - self.box.top)
        columns = slice(self.window.left - self.box.left, self.window.right - self.box.left)
        placed = placed[..., rows, columns]
        background = picture[:, self.window.top : self.window.bottom, self.window.left : self.window.right]
        weights = self.weights.to(picture.device, picture.dtype)
        if self.colour_match:
            placed = colour_matched(placed, background.expand_as(placed), weights)
        region = frames[..., self.window.top : self.window.bottom, self.window.left : self.window.right]
        region += weights * (placed - background)
        region.clamp_(0.0, 1.0)
        return frames


def composite_faces(
    picture: torch.Tensor, face_chunks: Sequence[Iterator[torch.Tensor]], pastes: Sequence[FacePaste], frames: int
) -> Iterator[torch.Tensor]:
    """Full-resolution frames ``(1, 3, H, W)``, one at a time, with every face added.

    ``face_chunks[k]`` yields face k's animated squares ``(n, 3, s, s)``; all faces are read in
    lockstep, so memory holds about one chunk of squares per face and one full-size frame, whatever
    the portrait's size. A face whose frames run out before ``frames`` holds its last frame."""
    streams = [_HeldFrames(chunks) for chunks in face_chunks]
    for _ in range(frames):
        output = picture.unsqueeze(0).clone()
        for stream, paste in zip(streams, pastes):
            paste.add(output, picture, stream.take(1))
        yield output


class _HeldFrames:
    """Frames read from a stream of chunks in any counts; after the last, the last frame again."""

    def __init__(self, chunks: Iterator[torch.Tensor]) -> None:
        self._chunks = chunks
        self._pending: torch.Tensor | None = None
        self._last: torch.Tensor | None = None

    def available(self) -> int:
        """How many frames the next :meth:`take` can hand out without reading more."""
        if self._pending is None or len(self._pending) == 0:
            self._pending = next(self._chunks, None)
            if self._pending is None:
                if self._last is None:
                    raise MediaError("an animated face has no frames")
                self._pending = self._last
        self._last = self._pending[-1:]
        return len(self._pending)

    def take(self, count: int) -> torch.Tensor:
        pieces = []
        while count > 0:
            piece = self._pending[:count] if self._pending is not None and len(self._pending) else None
            if piece is None:
                self.available()
                continue
            self._pending = self._pending[len(piece) :]
            pieces.append(piece)
            count -= len(piece)
        return torch.cat(pieces)


def paste_onto(
    picture: torch.Tensor,
    crop_chunks: Iterable[torch.Tensor],
    paste: FacePaste,
    earlier_chunks: Optional[Iterator[torch.Tensor]] = None,
) -> Iterator[torch.Tensor]:
    """One face added to the frames of an earlier paste (``earlier_chunks``, ``(n, 3, H, W)``,
    held at their last frame if shorter), or to the picture: chaining pastes face by face gives
    what :func:`composite_faces` gives for all faces at once. Yields full-size frames ``(1, 3, H, W)``
    one at a time."""
    earlier = _HeldFrames(earlier_chunks) if earlier_chunks is not None else None
    for crops in crop_chunks:
        for crop in crops.split(1):
            if earlier is None:
                frame = picture.unsqueeze(0).clone()
            else:
                frame = earlier.take(1).to(picture.device, picture.dtype).clone()
            yield paste.add(frame, picture, crop)
