"""Core ComfyUI's bounding boxes (BOUNDING_BOX: v0.33.0 has them) in and out of the face nodes.

A core box is a dict ``{"x", "y", "width", "height"}`` in picture pixels. Core nodes pass a
BOUNDING_BOX value as one such dict, a flat list of them (one picture), or a list with one list of
boxes per frame (what core's detectors output, and what its Draw BBoxes reads per image).

Where the running ComfyUI has no such type, the sockets are left out altogether, so the face
nodes look exactly as before and saved workflows (which link outputs by slot) keep working.
"""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.media.face_choice_box import FaceChoiceBox

HAS_CORE_BOXES = hasattr(io, "BoundingBox")


def face_box_inputs(tooltip: str) -> list:
    """The optional ``face_box`` socket, or nothing on a ComfyUI without core boxes."""
    if not HAS_CORE_BOXES:
        return []
    # A socket only, with no default: as a widget, or with the default box core puts on every
    # BoundingBox input, a prompt would always carry a box (the frontend's widget value, or the
    # default comfy-cli's converter fills in for an absent input) and so always choose a face.
    socket = io.BoundingBox.Input("face_box", optional=True, socketless=False, force_input=True, tooltip=tooltip)
    socket.default = None
    return [socket]


def face_box_outputs(display_name: str, tooltip: str) -> list:
    """An output after the existing ones (links go by slot), or nothing without core boxes."""
    if not HAS_CORE_BOXES:
        return []
    return [io.BoundingBox.Output(display_name=display_name, tooltip=tooltip)]


def with_face_boxes(outputs: tuple, boxes) -> tuple:
    """``outputs`` plus the boxes' value where the node declares the box output."""
    return (*outputs, boxes) if HAS_CORE_BOXES else outputs


def core_box(left: float, top: float, right: float, bottom: float) -> dict:
    """One box as core's dict, in whole pixels (core's Crop Image slices with them)."""
    x, y = round(left), round(top)
    return {"x": x, "y": y, "width": round(right) - x, "height": round(bottom) - y}


def core_track(boxes: torch.Tensor) -> list[list[dict]]:
    """``(F, 4)`` left, top, right, bottom boxes as one list of one box per frame."""
    return [[core_box(*row)] for row in boxes.tolist()]


def _choice(box: dict) -> FaceChoiceBox:
    try:
        x, y, width, height = (float(box[key]) for key in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"face_box: a box needs numbers x, y, width and height, got {box!r}") from None
    return FaceChoiceBox(x, y, x + width, y + height)


def _frames(value) -> list[list]:
    """Any BOUNDING_BOX value as one list of boxes per frame."""
    if isinstance(value, dict):
        return [[value]]
    if not isinstance(value, list):
        raise ValueError(f"face_box: expected core bounding boxes, got {type(value).__name__}")
    if value and all(isinstance(item, dict) for item in value):
        return [value]
    return [frame if isinstance(frame, list) else [frame] for frame in value]


def face_choice(value) -> FaceChoiceBox:
    """The box that chooses the face of one picture: the first box (of the first frame: core's
    detectors list their best first, and a picture is one frame)."""
    boxes = next((frame for frame in _frames(value) if frame), None)
    if boxes is None:
        raise ValueError("face_box holds no box: connect a node whose boxes surround the face to animate")
    return _choice(boxes[0])


def performer_choice(value) -> FaceChoiceBox | tuple[FaceChoiceBox | None, ...]:
    """The boxes that choose the driving performer: one box chooses the face it points at in the
    first frame that shows faces; a list per frame is read at that frame (its first box)."""
    frames = _frames(value)
    if len(frames) <= 1:
        return face_choice(value)
    return tuple(_choice(frame[0]) if frame else None for frame in frames)
