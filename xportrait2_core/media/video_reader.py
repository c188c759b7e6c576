"""Reading videos, streamed with PyAV: uint8 RGB frames ``(H, W, 3)`` (or chunks ``(N, H, W, 3)``)
as they decode, so a long driving video never sits in memory as float pixels."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch

from .images import MediaError, PathLike, require_existing_file

# A file, or a seekable binary stream (ComfyUI hands in-memory videos over as BytesIO).
VideoSource = PathLike | BinaryIO
# The longest stretch without a frame that a take may have: a phone's stall lasts well under a
# second; a longer gap would be filled with one repeated frame for all of it.
MAX_FRAME_GAP = Fraction(10)


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, as needed to plan a render.

    ``frame_count`` is what the container declares (counted by demuxing when it declares
    nothing); ``fps`` is exact, e.g. ``Fraction(30000, 1001)``; ``width``/``height`` are the
    displayed size, i.e. after the container's rotation has been applied.
    """

    frame_count: int
    fps: Fraction
    width: int
    height: int
    has_audio: bool
    duration: float


def _is_still_image_format(container: av.container.InputContainer) -> bool:
    # FFmpeg happily opens a PNG or JPEG as a one-frame "video" through these demuxers.
    names = container.format.name.split(",")
    return any(name == "image2" or name.endswith("_pipe") for name in names)


def readable_source(source: VideoSource) -> tuple[str | BinaryIO, str, int]:
    """What ``av.open`` takes for a source, the name to show in messages, and its size in bytes."""
    if isinstance(source, (str, Path)):
        path = require_existing_file(source, "video")
        return str(path), path.name, path.stat().st_size
    size = source.seek(0, os.SEEK_END)
    source.seek(0)
    name = Path(getattr(source, "name", "") or "the video (in memory)").name
    if size == 0:
        raise MediaError(f"{name} is empty (0 bytes): give a real video")
    return source, name, size


@dataclass
class _OpenVideo:
    container: av.container.InputContainer
    stream: av.video.stream.VideoStream
    name: str
    size: int


@contextmanager
def _open_video(source: VideoSource) -> Iterator[_OpenVideo]:
    target, name, size = readable_source(source)
    try:
        container = av.open(target)
    except (av.FFmpegError, OSError) as error:
        raise MediaError(f"{name} is not a readable video (damaged or not a video file): {error}") from error
    with container:
        if _is_still_image_format(container):
            raise MediaError(f"{name} is a still image, not a video: give a driving video")
        if not container.streams.video:
            raise MediaError(f"{name} has no video stream (is it a sound file?)")
        yield _OpenVideo(container, container.streams.video[0], name, size)


def _upright(frame: av.VideoFrame) -> np.ndarray:
    pixels = frame.to_ndarray(format="rgb24")
    # The display matrix says how far to turn the coded picture counter-clockwise (phones record
    # portrait video as rotated landscape); np.rot90 turns counter-clockwise too.
    quarter_turns = round(frame.rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, quarter_turns)) if quarter_turns else pixels


def _decoded_frames(video: _OpenVideo) -> Iterator[av.VideoFrame]:
    decoded = 0
    try:
        for frame in video.container.decode(video.stream):
            yield frame
            decoded += 1
    except av.FFmpegError as error:
        raise MediaError(f"{video.name} is damaged: decoding failed after {decoded} frames ({error})") from error


def _start_seconds(frame: av.VideoFrame, fallback: Fraction) -> Fraction:
    return Fraction(frame.pts * frame.time_base) if frame.pts is not None else fallback


def _at_constant_rate(frames: Iterator[av.VideoFrame], fps: Fraction, name: str) -> Iterator[av.VideoFrame]:
    """The frames as a constant-rate video of ``fps`` shows them.

    Slot ``k`` (at ``first + k / fps``) shows the frame on screen in the middle of that slot, so a
    variable-frame-rate source gets frames repeated or dropped where its timing wanders and its
    sound stays in sync with the output; a constant-rate source (timestamps within half a frame of
    their slot) passes one for one. A gap of more than :data:`MAX_FRAME_GAP` is refused rather than
    filled: it is a damaged or badly joined file, not a take (4 frames, the last at 10 minutes,
    would become 15,000).
    """
    previous = next(frames, None)
    if previous is None:
        return
    first, slot = _start_seconds(previous, Fraction(0)), 0
    previous_start = first
    for frame in frames:
        starts = _start_seconds(frame, first + Fraction(slot + 1) / fps)
        if starts - previous_start > MAX_FRAME_GAP:
            raise MediaError(
                f"{name} has no frame for {float(starts - previous_start):.1f} s after {float(previous_start - first):.1f} s "
                "(its timestamps jump: a damaged or badly joined file); re-encode it at a constant frame rate"
            )
        previous_start = starts
        while first + (slot + Fraction(1, 2)) / fps < starts:
            yield previous
            slot += 1
        previous = frame
    yield previous


def _check_not_truncated(video: _OpenVideo) -> None:
    # MP4/MOV indexes give every sample's byte position: a cut download is caught here, before
    # anything is decoded (threaded decoding would otherwise just end early without an error).
    if any(entry.pos + entry.size > video.size for entry in video.stream.index_entries):
        raise MediaError(f"{video.name} is truncated: its index points past the end of the file (incomplete download?)")


def _frame_rate(video: _OpenVideo) -> Fraction:
    stream = video.stream
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise MediaError(f"{video.name} does not say its frame rate")
    return Fraction(rate)


def _count_video_packets(source: VideoSource) -> int:
    with _open_video(source) as video:
        try:
            return sum(1 for packet in video.container.demux(video.stream) if packet.size > 0)
        except av.FFmpegError as error:
            raise MediaError(f"{video.name} is damaged: {error}") from error


def _duration_seconds(video: _OpenVideo, frame_count: int, fps: Fraction) -> float:
    if video.stream.duration:
        return float(video.stream.duration * video.stream.time_base)
    if video.container.duration:
        return video.container.duration / av.time_base
    return float(frame_count / fps)


def probe_video(source: VideoSource) -> VideoInfo:
    """Describe a video (a file, or a seekable binary stream such as ComfyUI's in-memory videos)
    without decoding it (only its first frame, to prove it decodes).

    Raises :class:`MediaError` for a missing, empty, damaged or still-image file, a file without
    a video stream and a video without frames.
    """
    with _open_video(source) as video:
        fps = _frame_rate(video)
        _check_not_truncated(video)
        first = next(_decoded_frames(video), None)
        if first is None:
            raise MediaError(f"{video.name} has no frames")
        frame_count = video.stream.frames or _count_video_packets(source)
        height, width = _upright(first).shape[:2]
        return VideoInfo(
            frame_count=frame_count,
            fps=fps,
            width=width,
            height=height,
            has_audio=bool(video.container.streams.audio),
            duration=_duration_seconds(video, frame_count, fps),
        )


def _batched(frames: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    iterator = iter(frames)
    while batch := list(itertools.islice(iterator, size)):
        yield np.stack(batch)


def stream_frames(source: VideoSource, max_frames: int | None, chunk_size: int | None) -> Iterator[torch.Tensor]:
    """:func:`iter_frames` of a source already probed (one opening of the file per pass)."""
    with _open_video(source) as video:
        video.stream.thread_type = "AUTO"
        constant_rate = _at_constant_rate(_decoded_frames(video), _frame_rate(video), video.name)
        frames = (_upright(frame) for frame in itertools.islice(constant_rate, max_frames))
        batches = frames if chunk_size is None else _batched(frames, chunk_size)
        for batch in batches:
            yield torch.from_numpy(batch)


def iter_frames(
    source: VideoSource, max_frames: int | None = None, chunk_size: int | None = None
) -> Iterator[torch.Tensor]:
    """Decode a video lazily into uint8 RGB frames ``(H, W, 3)``, upright, at its constant frame
    rate (:attr:`VideoInfo.fps`; a variable-frame-rate video is resampled to it).

    With ``chunk_size`` the frames come in chunks ``(N, H, W, 3)`` with ``N <= chunk_size`` (only
    the last one shorter). ``max_frames`` stops after that many frames. The source is checked
    before this returns (:func:`probe_video`), so a bad path fails here, not on the first
    ``next()``. A file damaged further in raises :class:`MediaError` when decoding reaches it.
    """
    for name, value in (("max_frames", max_frames), ("chunk_size", chunk_size)):
        if value is not None and value < 1:
            raise MediaError(f"{name} must be at least 1, got {value}")
    probe_video(source)
    return stream_frames(source, max_frames, chunk_size)
