"""Which driving video, and which performer in it, drives each chosen face of the portrait.

One video may drive every face (the same performer for all, or performer *i* for the *i*-th
chosen face), one video per face may be given in the order of the faces, or an explicit mapping
``FACE=VIDEO[:PERFORMER]`` names both for each face.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .media.face_track import LARGEST_PERFORMER, Performer
from .media.portrait_faces import FaceSelectionError

# Performer choice meaning "performer i for the i-th chosen face".
EACH_PERFORMER = "each"


@dataclass(frozen=True)
class FaceDrive:
    face: int  # index of the portrait's face, left to right
    driving: Path
    performer: Performer  # "largest" or an index left to right at the video's first frame with faces


@dataclass(frozen=True)
class DriveMapping:
    """One ``FACE=VIDEO[:PERFORMER]`` item; no performer means the general choice."""

    face: int
    driving: Path
    performer: Optional[int] = None


def parse_performer(text: str) -> str | int:
    """``"largest"``, ``"each"`` or a performer index."""
    cleaned = str(text).strip().lower()
    if cleaned in (LARGEST_PERFORMER, EACH_PERFORMER):
        return cleaned
    if cleaned.isdigit():
        return int(cleaned)
    raise FaceSelectionError(f"performer must be 'largest', 'each' or an index such as 1, got {text!r}")


def parse_drive_mapping(text: str) -> DriveMapping:
    """``"0=a.mp4"`` or ``"1=b.mp4:1"``."""
    face, separator, target = text.partition("=")
    if not separator or not face.strip().isdigit() or not target:
        raise FaceSelectionError(f"--drive takes FACE=VIDEO or FACE=VIDEO:PERFORMER such as 0=a.mp4:1, got {text!r}")
    video, colon, performer = target.rpartition(":")
    if colon and performer.isdigit() and video:
        return DriveMapping(int(face), Path(video), int(performer))
    return DriveMapping(int(face), Path(target))


def _performer_for(choice: str | int, position: int) -> Performer:
    return position if choice == EACH_PERFORMER else choice


def assign_drives(
    faces: Sequence[int], drivings: Sequence[Path], performer: str | int = LARGEST_PERFORMER
) -> list[FaceDrive]:
    """Drives for the chosen ``faces``: one video for all of them, or one video per face in order."""
    if not drivings:
        raise FaceSelectionError("no driving video given")
    if len(drivings) == 1:
        videos = [drivings[0]] * len(faces)
    elif len(drivings) == len(faces):
        videos = list(drivings)
    else:
        raise FaceSelectionError(
            f"{len(drivings)} driving videos for {len(faces)} face(s): give one video for all faces, one per face "
            "in the order of the faces, or a mapping with --drive FACE=VIDEO[:PERFORMER]"
        )
    return [
        FaceDrive(face, video, _performer_for(performer, position))
        for position, (face, video) in enumerate(zip(faces, videos))
    ]


def drives_from_mapping(mapping: Sequence[DriveMapping], performer: str | int = LARGEST_PERFORMER) -> list[FaceDrive]:
    """Drives as an explicit mapping gives them (a face may appear once)."""
    faces = [item.face for item in mapping]
    if len(set(faces)) != len(faces):
        raise FaceSelectionError(f"each face may be driven once, got faces {faces}")
    return [
        FaceDrive(item.face, item.driving, _performer_for(performer, position) if item.performer is None else item.performer)
        for position, item in enumerate(mapping)
    ]
