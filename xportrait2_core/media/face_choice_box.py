"""Choosing a face by a box drawn or detected elsewhere (an artist's box, another detector's).

A box chooses the detected face it points at: the face's box must lie mostly inside it (a loose
box around a head) or it must lie mostly on the face's box (a tight box, e.g. landmark extents,
which sit inside a detector's box). Among such faces the one that overlaps it best (largest
intersection over union) wins, so a box around two faces still picks one deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .face_detector import FaceNotFoundError

# A face counts as pointed at when the intersection covers at least this share of the smaller of
# the two boxes; half lets a loose or a tight box through and rejects a neighbour grazed by it.
MIN_SHARED_AREA = 0.5


@dataclass(frozen=True)
class FaceChoiceBox:
    """A box, in picture pixels, that chooses the face it points at."""

    left: float
    top: float
    right: float
    bottom: float

    def describe(self) -> str:
        return _describe(self.left, self.top, self.right, self.bottom)


def _describe(left: float, top: float, right: float, bottom: float) -> str:
    """As core ComfyUI's boxes read: corner, then width x height."""
    return f"(x {left:.0f}, y {top:.0f}, {right - left:.0f}x{bottom - top:.0f})"


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def face_at_box(faces: torch.Tensor, box: FaceChoiceBox, name: str) -> int:
    """Index (into ``faces``, ``(N, 4+)`` rows starting left, top, right, bottom) of the face that
    ``box`` points at. Raises :class:`FaceNotFoundError`, in one line, when it points at none."""
    given = torch.tensor([box.left, box.top, box.right, box.bottom], dtype=torch.float32)
    boxes = faces[:, :4].float()
    corners = torch.cat([torch.maximum(boxes[:, :2], given[:2]), torch.minimum(boxes[:, 2:], given[2:])], dim=1)
    shared = _area(corners)
    face_areas, given_area = _area(boxes), _area(given)
    pointed = (given_area > 0) & (shared >= MIN_SHARED_AREA * torch.minimum(face_areas, given_area))
    if not pointed.any():
        found = ", ".join(_describe(*row) for row in boxes.tolist())
        raise FaceNotFoundError(
            f"no face at the box {box.describe()} in {name}: it must surround a face or lie on one; "
            f"the faces found are at {found or 'nowhere'}"
        )
    overlap = (shared / (face_areas + given_area - shared)).masked_fill(~pointed, -1.0)
    return int(overlap.argmax())
