"""Writing videos: H.264 encoded into a temporary file beside the target that only becomes the
target once everything succeeded, so an interrupted or failed render never leaves a half-written
video under the requested name."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from ..finished_files import new_partial_file, partial_prefix, partial_suffix, publish, remove_if_abandoned, write_failure
from .images import MediaError, PathLike
from .video_reader import VideoSource, readable_source

FrameRate = Fraction | int | float | str


# crf 12 is visually lossless for x264 on 8-bit yuv420p (18 is the usual "transparent" value and
# what the official script uses); the files stay a few MB per hundred 512x512 frames.
DEFAULT_CRF = 12
DEFAULT_PRESET = "medium"
WRITABLE_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv"}


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


def remove_partial_files(path: PathLike) -> None:
    """Delete the hidden partial files a writer of ``path`` left when its process was killed
    outright (a crash, a lost Ray worker), where no clean-up could run."""
    path = Path(path)
    for partial in path.parent.glob(f"{glob.escape(partial_prefix(path))}*{glob.escape(partial_suffix(path))}"):
        remove_if_abandoned(partial)


class _AudioRemuxer:
    """Copies the audio packets of a source file into the output, unchanged, up to a time limit."""

    def __init__(self, source: av.container.InputContainer, output: av.container.OutputContainer) -> None:
        self._input = source
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


def _audio_remuxer(source: VideoSource, output: av.container.OutputContainer) -> _AudioRemuxer | None:
    """A remuxer of the source's audio into ``output``, or None when the source has no sound."""
    target, name, _ = readable_source(source)
    try:
        container = av.open(target)
    except av.FFmpegError as error:
        raise MediaError(f"{name} cannot be read for its audio: {error}") from error
    if not container.streams.audio:
        container.close()
        return None
    try:
        return _AudioRemuxer(container, output)
    except BaseException:
        container.close()
        raise


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
        if self.path.suffix.lower() not in WRITABLE_SUFFIXES:
            raise MediaError(f"{self.path.name}: output video must end in one of {sorted(WRITABLE_SUFFIXES)}")
        if not self.path.parent.is_dir():
            raise MediaError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self.frames_written = 0
        self._frame_size: tuple[int, int] | None = None
        self._temp_path, self._lock = self._make_temp_path()
        self._audio: _AudioRemuxer | None = None
        self._closed = False
        self._guarded(self._open, crf, preset, audio_from)

    def _make_temp_path(self) -> tuple[Path, int]:
        try:
            return new_partial_file(self.path)
        except OSError as error:
            raise MediaError(f"cannot write into {self.path.parent}: {error}") from error

    def _open(self, crf: int, preset: str, audio_from: VideoSource | None) -> None:
        self._container = av.open(str(self._temp_path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=self.fps)
        self._stream.pix_fmt = "yuv420p"
        # No macroblock tree: with it x264 encoded the same frames into different files from one
        # run to the next (seen on 64 px frames, depending on what else lay in memory), and a video
        # must depend on its frames alone; at crf 12 the quality it adds is not visible.
        self._stream.options = {"crf": str(crf), "preset": preset, "x264-params": "mbtree=0"}
        if audio_from is not None:
            self._audio = _audio_remuxer(audio_from, self._container)

    def _guarded(self, action: Callable[..., None], *args: object) -> None:
        """Run an action on the file; any failure removes the partial file and becomes a MediaError."""
        try:
            action(*args)
        except (av.FFmpegError, OSError) as error:
            self.abort()
            raise MediaError(write_failure(self.path, error)) from error
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
        publish(self._temp_path, self.path)
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

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
        self._release_lock()


def write_animation(writer: VideoWriter, frame_chunks: Iterable[torch.Tensor]) -> None:
    """Write chunks ``(N, 3, h, w)`` in [0, 1] as they come. Each chunk is encoded on a background
    thread while the next one is made (decoded on the GPU, pasted back), so that the two overlap;
    at most one chunk waits to be encoded, and an error on either side stops both."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xportrait2-encode") as encoder:
        encoding = None
        for chunk in frame_chunks:
            frames = chunk.permute(0, 2, 3, 1).cpu()
            if encoding is not None:
                encoding.result()
            encoding = encoder.submit(writer.write, frames)
        if encoding is not None:
            encoding.result()
