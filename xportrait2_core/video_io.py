"""Video files in and out of the engine, streamed with PyAV.

Reading yields uint8 RGB frames ``(H, W, 3)`` (or chunks ``(N, H, W, 3)``) as they decode, so a
long driving video never sits in memory as float pixels. Writing encodes H.264 into a temporary
file beside the target that only becomes the target once everything succeeded, so an
interrupted or failed render never leaves a half-written video under the requested name.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch

from .images import MediaError, PathLike, require_existing_file

FrameRate = Fraction | int | float | str
# A file, or a seekable binary stream (ComfyUI hands in-memory videos over as BytesIO).
VideoSource = PathLike | BinaryIO

# crf 12 is visually lossless for x264 on 8-bit yuv420p (18 is the usual "transparent" value and
# what the official script uses); the files stay a few MB per hundred 512x512 frames.
DEFAULT_CRF = 12
DEFAULT_PRESET = "medium"
_WRITABLE_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv"}


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


def _readable(source: VideoSource) -> tuple[str | BinaryIO, str, int]:
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
    target, name, size = _readable(source)
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


def _at_constant_rate(frames: Iterator[av.VideoFrame], fps: Fraction) -> Iterator[av.VideoFrame]:
    """The frames as a constant-rate video of ``fps`` shows them.

    Slot ``k`` (at ``first + k / fps``) shows the frame on screen in the middle of that slot, so a
    variable-frame-rate source gets frames repeated or dropped where its timing wanders and its
    sound stays in sync with the output; a constant-rate source (timestamps within half a frame of
    their slot) passes one for one.
    """
    previous = next(frames, None)
    if previous is None:
        return
    first, slot = _start_seconds(previous, Fraction(0)), 0
    for frame in frames:
        starts = _start_seconds(frame, first + Fraction(slot + 1) / fps)
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


def _stream_frames(source: VideoSource, max_frames: int | None, chunk_size: int | None) -> Iterator[torch.Tensor]:
    with _open_video(source) as video:
        video.stream.thread_type = "AUTO"
        constant_rate = _at_constant_rate(_decoded_frames(video), _frame_rate(video))
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
    return _stream_frames(source, max_frames, chunk_size)


def exact_frame_rate(fps: FrameRate) -> Fraction:
    """A frame rate as an exact fraction; floats snap to the nearest x/1001-style ratio (29.97002997 -> 30000/1001)."""
    rate = Fraction(fps).limit_denominator(1001) if isinstance(fps, float) else Fraction(fps)
    if rate <= 0:
        raise MediaError(f"frame rate must be positive, got {fps}")
    return rate


def _as_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(f"frames must be (H, W, 3) or (N, H, W, 3) RGB, got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        # Rounding, not the official truncation, so a float frame read back equals what was given.
        frames = (frames.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return frames.cpu().numpy()


def _even_padded(frames: np.ndarray) -> np.ndarray:
    # yuv420p stores colour at half resolution, so x264 needs even sides: odd ones get one more
    # row/column repeating the edge (invisible, nothing of the picture is lost).
    height, width = frames.shape[1:3]
    padding = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
    return np.pad(frames, padding, mode="edge") if height % 2 or width % 2 else frames


class _AudioRemuxer:
    """Copies the audio packets of a source file into the output, unchanged, up to a time limit."""

    def __init__(self, source: VideoSource, output: av.container.OutputContainer) -> None:
        self._input = av.open(_readable(source)[0])
        audio = self._input.streams.audio[0]
        video = self._input.streams.video[0] if self._input.streams.video else None
        self._output_stream = output.add_stream_from_template(audio)
        self._output = output
        self._time_base = audio.time_base
        # The written video starts at 0 while the source's video may start later: shift the audio
        # by the same amount so lips stay in sync.
        video_start = Fraction(video.start_time * video.time_base) if video and video.start_time else Fraction(0)
        self._shift = round(video_start / self._time_base)
        self._packets = (p for p in self._input.demux(audio) if p.pts is not None and p.size > 0)
        self._pending: av.Packet | None = None

    def _start_seconds(self, packet: av.Packet) -> Fraction:
        return (packet.pts - self._shift) * self._time_base

    def mux_until(self, seconds: Fraction) -> None:
        """Mux every packet that starts before ``seconds`` (so the audio ends within one packet of it)."""
        while True:
            if self._pending is None:
                self._pending = next(self._packets, None)
                if self._pending is None:
                    return
            if self._start_seconds(self._pending) >= seconds:
                return
            packet, self._pending = self._pending, None
            packet.pts -= self._shift
            packet.dts = packet.dts - self._shift if packet.dts is not None else None
            packet.stream = self._output_stream
            self._output.mux(packet)

    def close(self) -> None:
        self._input.close()


def _has_audio(source: VideoSource) -> bool:
    target, name, _ = _readable(source)
    try:
        with av.open(target) as container:
            return bool(container.streams.audio)
    except av.FFmpegError as error:
        raise MediaError(f"{name} cannot be read for its audio: {error}") from error


class VideoWriter:
    """Streamed H.264 (libx264, yuv420p) writer with an all-or-nothing result file.

    Use as a context manager::

        with VideoWriter("out.mp4", fps=info.fps, audio_from="driving.mp4") as writer:
            for chunk in frames:
                writer.write(chunk)

    ``write`` takes uint8 ``(H, W, 3)``/``(N, H, W, 3)`` tensors or float ones in ``[0, 1]``.
    ``fps`` is kept exactly (a ``Fraction`` such as 30000/1001 stays 30000/1001). ``crf``
    defaults to 12 (visually lossless). Odd widths/heights are padded by one repeated edge
    row/column to even sizes. ``audio_from`` copies, without re-encoding, the audio track of that
    file (nothing happens when it has none), trimmed to the video's length at packet granularity.
    The video appears under ``path`` only when :meth:`close` succeeds; an exception inside the
    ``with`` block (KeyboardInterrupt included) or :meth:`abort` deletes the partial file.
    Write failures (full disk, ...) raise :class:`MediaError` and delete it as well.
    """

    def __init__(
        self,
        path: PathLike,
        fps: FrameRate,
        *,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        audio_from: VideoSource | None = None,
    ) -> None:
        self.path = Path(path)
        self.fps = exact_frame_rate(fps)
        if self.path.suffix.lower() not in _WRITABLE_SUFFIXES:
            raise MediaError(f"{self.path.name}: output video must end in one of {sorted(_WRITABLE_SUFFIXES)}")
        if not self.path.parent.is_dir():
            raise MediaError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self.frames_written = 0
        self._frame_size: tuple[int, int] | None = None
        self._temp_path = self._make_temp_path()
        self._audio: _AudioRemuxer | None = None
        self._closed = False
        self._guarded(self._open, crf, preset, audio_from)

    def _make_temp_path(self) -> Path:
        try:
            handle, name = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=f".partial{self.path.suffix}"
            )
        except OSError as error:
            raise MediaError(f"cannot write into {self.path.parent}: {error}") from error
        os.close(handle)
        return Path(name)

    def _open(self, crf: int, preset: str, audio_from: VideoSource | None) -> None:
        self._container = av.open(str(self._temp_path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=self.fps)
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": preset}
        if audio_from is not None and _has_audio(audio_from):
            self._audio = _AudioRemuxer(audio_from, self._container)

    def _guarded(self, action: Callable[..., None], *args: object) -> None:
        """Run an action on the file; any failure removes the partial file and becomes a MediaError."""
        try:
            action(*args)
        except (av.FFmpegError, OSError) as error:
            self.abort()
            raise MediaError(f"writing {self.path.name} failed: {error}") from error
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _check_size(self, frames: np.ndarray) -> None:
        size = frames.shape[1:3]
        if self._frame_size is None:
            self._frame_size = size
            self._stream.height, self._stream.width = (side + side % 2 for side in size)
        elif size != self._frame_size:
            raise MediaError(f"{self.path.name}: frame size {size} differs from the first frame's {self._frame_size}")

    def _encode(self, frames: np.ndarray) -> None:
        for pixels in _even_padded(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = self.frames_written
            self._container.mux(self._stream.encode(frame))
            self.frames_written += 1
        if self._audio is not None:
            self._audio.mux_until(self.frames_written / self.fps)

    def write(self, frames: torch.Tensor) -> None:
        """Append one frame ``(H, W, 3)`` or a chunk ``(N, H, W, 3)``; all frames must share one size."""
        if self._closed:
            raise MediaError(f"{self.path.name} is already closed")
        pixels = _as_uint8_frames(frames)
        self._check_size(pixels)
        self._guarded(self._encode, pixels)

    def _finish(self) -> None:
        self._container.mux(self._stream.encode())
        if self._audio is not None:
            self._audio.mux_until(self.frames_written / self.fps)
            self._audio.close()
        self._container.close()
        os.replace(self._temp_path, self.path)

    def close(self) -> None:
        """Flush the encoder, finish the file and move it to its name."""
        if self._closed:
            return
        if self.frames_written == 0:
            self.abort()
            raise MediaError(f"{self.path.name}: no frames were written, so no video was made")
        self._guarded(self._finish)
        self._closed = True

    def abort(self) -> None:
        """Discard everything written so far; nothing remains under the target name."""
        self._closed = True
        for resource in (self._audio, getattr(self, "_container", None)):
            if resource is not None:
                try:
                    resource.close()
                except (av.FFmpegError, OSError):
                    pass  # the file is being thrown away; a failed trailer write does not matter
        self._temp_path.unlink(missing_ok=True)
