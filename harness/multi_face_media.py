"""Composed multi-face test media: two portraits side by side, two driving videos side by side."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from harness.media import _tone, media, save_image
from xportrait2_core.media.images import load_image
from xportrait2_core.media.video_reader import iter_frames

# The two-face portrait: photo_ref.png (face 0, left) and cartoon_ref.png (face 1, right).
PORTRAITS = ("photo_ref.png", "cartoon_ref.png")
# The two-performer take: driving_230f.mp4 (performer 0, left) and driving_60f.mp4 (performer 1).
TAKES = ("driving_230f.mp4", "driving_60f.mp4")
# The file names the "Portrait video - two faces" workflow loads.
TWO_FACE_PORTRAIT = "two_faces.png"
TWO_PERFORMER_TAKE = "two_performers.mp4"


def two_face_portrait(target: Path, size: int = 256) -> Path:
    """``photo_ref.png`` and ``cartoon_ref.png`` side by side, each shrunk to ``size`` square."""
    halves = [
        torch.nn.functional.interpolate(load_image(media(name))[None], size=(size, size), mode="area")[0]
        for name in PORTRAITS
    ]
    save_image(torch.cat(halves, dim=2), target)
    return target


def first_frames(name: str, count: int, size: int) -> list[np.ndarray]:
    frames = []
    for chunk in iter_frames(media(name), max_frames=count, chunk_size=count):
        images = chunk.permute(0, 3, 1, 2).float()
        small = torch.nn.functional.interpolate(images, size=(size, size), mode="area")
        frames.extend(small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return frames


def write_frames(target: Path, frames: list[np.ndarray], fps: Fraction, tone: bool = False) -> Path:
    with av.open(str(target), "w") as output:
        video = output.add_stream("libx264", rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        audio = output.add_stream("aac", rate=44100) if tone else None
        if audio is not None:
            audio.layout = "mono"
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts = index
            output.mux(video.encode(frame))
        output.mux(video.encode())
        if audio is not None:
            output.mux(audio.encode(_tone(float(len(frames) / fps), 44100)))
            output.mux(audio.encode())
    return target


def two_performer_take(target: Path, frames: int, size: int = 256, fps: Fraction = Fraction(25), tone: bool = False) -> Path:
    """The first ``frames`` frames of both driving videos side by side, each ``size`` square."""
    left, right = (first_frames(name, frames, size) for name in TAKES)
    return write_frames(target, [np.concatenate(pair, axis=1) for pair in zip(left, right)], fps, tone)


def single_take(target: Path, name: str, frames: int, size: int = 256, fps: Fraction = Fraction(25), tone: bool = False) -> Path:
    """The first ``frames`` frames of one shared driving video, ``size`` square."""
    return write_frames(target, first_frames(name, frames, size), fps, tone)
