"""Choosing which faces of a portrait to animate: ``largest`` (the most prominent one, the
default), ``all``, indices such as ``0,2``, or the face a :class:`FaceChoiceBox` points at. Faces are numbered left to right by the centre of
their box, so an index names the same person however the detector ordered its output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch

from .crops import FaceBox
from .face_choice_box import FaceChoiceBox, face_at_box
from .face_detector import FaceDetectorRunner, detect_faces, most_prominent
from .images import MediaError
from .source_crops import REFERENCE_IMAGE_SIZE, SourcePortrait, portrait_from_face

LARGEST = "largest"
ALL = "all"


class FaceSelectionError(MediaError):
    """A face or performer choice that the picture or video cannot satisfy."""


def parse_face_selection(text: str) -> str | tuple[int, ...]:
    """``"largest"``, ``"all"`` or a tuple of face indices from ``"0,2"``."""
    cleaned = text.strip().lower()
    if cleaned in (LARGEST, ALL):
        return cleaned
    try:
        indices = tuple(int(part) for part in cleaned.split(","))
    except ValueError:
        raise FaceSelectionError(f"faces must be 'largest', 'all' or indices such as '0,2', got {text!r}") from None
    if any(index < 0 for index in indices):
        raise FaceSelectionError(f"face indices count from 0, got {text!r}")
    if len(set(indices)) != len(indices):
        raise FaceSelectionError(f"each face may be chosen once, got {text!r}")
    return indices


def check_face_index(index: int, face_count: int, name: str) -> None:
    if not 0 <= index < face_count:
        found = "1 face was" if face_count == 1 else f"{face_count} faces were"
        raise FaceSelectionError(
            f"face {index} does not exist: {found} found in {name} (indices 0 to {face_count - 1}, left to right)"
        )


FaceSelection = Union[str, Sequence[int], FaceChoiceBox]


def selected_indices(faces: torch.Tensor, selection: FaceSelection, name: str) -> list[int]:
    """Indices (left to right) of the chosen faces among ``(N, 15)`` detections numbered left to right."""
    if isinstance(selection, FaceChoiceBox):
        return [face_at_box(faces, selection, name)]
    if selection == LARGEST:
        boxes = faces[:, :5]
        return [int((boxes == most_prominent(boxes)).all(dim=1).nonzero()[0])]
    if selection == ALL:
        return list(range(len(faces)))
    for index in selection:
        check_face_index(index, len(faces), name)
    return list(selection)


def describe_faces(faces: torch.Tensor) -> list[str]:
    """One line per detection: index, box corners and score."""
    return [
        f"face {index}: box ({left:.0f}, {top:.0f})-({right:.0f}, {bottom:.0f}), score {score:.2f}"
        for index, (left, top, right, bottom, score) in enumerate(faces[:, :5].tolist())
    ]


@dataclass(frozen=True)
class PortraitFaces:
    """Every face found in a portrait (left to right) and the crops of the chosen ones."""

    detections: torch.Tensor  # (N, 15) box, score, five landmarks, numbered left to right
    chosen: tuple[int, ...]  # indices into ``detections``
    portraits: tuple[SourcePortrait, ...]  # the crops of each chosen face, in the same order


def prepare_portrait_faces(
    image: torch.Tensor,
    detector: FaceDetectorRunner,
    selection: FaceSelection = LARGEST,
    name: str = "the source image",
    reference_size: int = REFERENCE_IMAGE_SIZE,
) -> PortraitFaces:
    """Detect every face of a ``(3, H, W)`` portrait and cut both crops of each chosen one."""
    detections = detect_faces(image, detector, name)
    chosen = selected_indices(detections, selection, name)
    portraits = tuple(
        portrait_from_face(image, FaceBox(*detections[index, :5].tolist()), reference_size) for index in chosen
    )
    return PortraitFaces(detections, tuple(chosen), portraits)
