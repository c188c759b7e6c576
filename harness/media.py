"""Test media: the real files in ``../shared/media`` and small files made on the fly."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from harness import SHARED
from xportrait2_core.media.images import MediaError, PathLike, to_uint8_hwc

SHARED_MEDIA = SHARED / "media"


def media(name: str) -> Path:
    """A file of the shared test media; a missing one fails the test (it is part of the checkout)."""
    path = SHARED_MEDIA / name
    assert path.is_file(), f"test media {name} missing: expected {path} (the shared folder beside the repo)"
    return path


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 255.0) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def write_clip_with_audio(path: Path, frame_count: int, fps: Fraction, size=(64, 48), sample_rate=44100) -> None:
    """A small H.264 + AAC mp4: moving grey bars and a 440 Hz tone as long as the video."""
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=sample_rate)
        audio.layout = "mono"
        for index in range(frame_count):
            pixels = np.full((height, width, 3), 40, np.uint8)
            pixels[:, (index * 3) % width :][:, :8] = 220
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        container.mux(audio.encode(_tone(float(frame_count / fps), sample_rate)))
        container.mux(audio.encode())


def _tone(seconds: float, sample_rate: int, frequency: float = 440.0) -> av.AudioFrame:
    times = np.arange(int(sample_rate * seconds)) / sample_rate
    samples = av.AudioFrame.from_ndarray(
        (0.3 * np.sin(2 * np.pi * frequency * times)).astype(np.float32)[None], format="flt", layout="mono"
    )
    samples.sample_rate, samples.pts = sample_rate, 0
    return samples


def write_driving_clip(
    target: Path,
    frames: int,
    source: Path | None = None,
    fps: Fraction | None = None,
    tone: bool | float = False,
    faceless: Iterable[int] = (),
    mirrored: Iterable[int] = (),
    lossless: bool = False,
) -> Path:
    """The first ``frames`` frames of a real driving video (``driving_60f.mp4`` by default, looped
    when it is shorter) as an H.264 MP4 at ``fps`` (the source's by default), optionally with a
    tone as long as the video (``True``: 440 Hz, or its frequency), with the ``faceless`` frames
    replaced by plain grey and the ``mirrored`` frames' face mirrored about its own centre (the
    face is found where it was, its expression changes: a mark on one frame of the take). ``lossless`` (H.264 at qp 0):
    a frame decodes the same whatever its neighbours are, so two takes differ only where they were
    made to."""
    source = source or media("driving_60f.mp4")
    faceless, mirrored = set(faceless), set(mirrored)
    with av.open(str(source)) as container:
        pictures = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        fps = fps or Fraction(container.streams.video[0].average_rate)
    height, width = pictures[0].shape[:2]
    with av.open(str(target), "w") as output:
        video = output.add_stream("libx264", rate=fps, options={"qp": "0"} if lossless else {})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = output.add_stream("aac", rate=44100) if tone else None
        if audio is not None:
            audio.layout = "mono"
        for index in range(frames):
            pixels = np.full_like(pictures[0], 128) if index in faceless else pictures[index % len(pictures)]
            if index in mirrored:
                pixels = mirrored_about_face(pixels)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            output.mux(video.encode(frame))
        output.mux(video.encode())
        if audio is not None:
            output.mux(audio.encode(_tone(float(frames / fps), 44100, 440.0 if tone is True else float(tone))))
            output.mux(audio.encode())
    return target


def mirrored_about_face(pixels: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 frame whose columns around the face are mirrored about the face's
    centre: the face box stays (so does the driving crop), the face looks the other way."""
    from xportrait2_core.media.face_detector import FaceDetectorRunner, detect_face

    detector = FaceDetectorRunner.from_weights(media("yunet_final.pth"))
    face = detect_face(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, detector)
    centre = round((face.left + face.right) / 2)
    half = min(centre, pixels.shape[1] - centre)
    out = pixels.copy()
    out[:, centre - half : centre + half] = pixels[:, centre - half : centre + half][:, ::-1]
    return out


def take_frames(count: int, source: Path | None = None) -> list[np.ndarray]:
    """The first ``count`` frames of a real driving video (``driving_60f.mp4`` by default), RGB uint8."""
    with av.open(str(source or media("driving_60f.mp4"))) as container:
        return [frame.to_ndarray(format="rgb24") for _, frame in zip(range(count), container.decode(video=0))]


def write_phone_take(
    target: Path,
    pictures: list[np.ndarray],
    fps: Fraction = Fraction(25),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    audio: str | None = None,
    starts: list[Fraction] | None = None,
    lossless: bool = False,
) -> Path:
    """``pictures`` (upright, as a viewer should show them) written the ways phones write video:
    ``rotation`` (a multiple of 90): the pictures are stored turned and the container's display
    matrix turns them back; another ``codec``/``pix_fmt`` (10-bit, HEVC, 4:4:4 for odd sizes);
    ``audio`` "before" or "after": a 440 Hz tone stream stored before or after the video stream;
    ``starts``: each frame's time in seconds (variable frame rate)."""
    quarter_turns = rotation // 90 % 4
    with av.open(str(target), "w") as output:
        tone = output.add_stream("aac", rate=44100) if audio == "before" else None
        options = {"qp": "0"} if lossless and codec == "libx264" else {}
        video = output.add_stream(codec, rate=fps, options=options)
        stored = [np.ascontiguousarray(np.rot90(picture, k=quarter_turns)) for picture in pictures]
        video.height, video.width = stored[0].shape[:2]
        video.pix_fmt = pix_fmt
        if quarter_turns:
            video.set_display_rotation(-90 * quarter_turns)
        if starts is not None:
            video.codec_context.time_base = Fraction(1, 1000)
        if audio == "after":
            tone = output.add_stream("aac", rate=44100)
        if tone is not None:
            tone.layout = "mono"
        for index, picture in enumerate(stored):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            if starts is None:
                frame.pts = index
            else:
                frame.pts, frame.time_base = round(starts[index] * 1000), Fraction(1, 1000)
            output.mux(video.encode(frame))
        output.mux(video.encode())
        if tone is not None:
            seconds = float(starts[-1] + 1 / fps) if starts is not None else len(pictures) / float(fps)
            output.mux(tone.encode(_tone(seconds, 44100)))
            output.mux(tone.encode())
    return target


def write_large_take(target: Path, frames: int, width: int = 3840, height: int = 2160, fps: int = 60) -> Path:
    """A ``width`` x ``height`` take of ``frames`` frames at ``fps``: the first 60 frames of
    ``driving_60f.mp4``, looped, each scaled to a face about half the frame high in the middle of a
    grey frame (composed frame by frame, so nothing near the take's size is ever held)."""
    from PIL import Image

    side = height * 128 // 270  # 1024 px in a 4K frame
    faces = [np.asarray(Image.fromarray(picture).resize((side, side))) for picture in take_frames(60)]
    canvas = np.full((height, width, 3), 90, np.uint8)
    top, left = (height - side) // 2, (width - side) // 2
    with av.open(str(target), "w") as output:
        video = output.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            canvas[top : top + side, left : left + side] = faces[index % len(faces)]
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            frame.pts = index
            output.mux(video.encode(frame))
        output.mux(video.encode())
    return target


def dominant_frequency(path: Path) -> float:
    """The strongest frequency (Hz) of a file's first audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in container.decode(stream)])
        rate = stream.rate
    spectrum = np.abs(np.fft.rfft(samples - samples.mean()))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


# What the calibrated tiny weights show, in levels (0..255) of the face region at 64 px and 2 steps
# (measured on the shared media): a different take moves it by about 24 on average; a driving face
# mirrored in one frame moves that output frame by ~20, its two neighbours by ~6 (the VAE decoder
# mixes neighbouring frames) and the others by 1-5 (the smoothed face track moves their crops by a
# pixel or so).
TAKES_DIFFER = 10.0
FRAME_CHANGED = 8.0
MARK_OVER_OTHERS = 2.0  # the marked frame changes at least this many times more than any other


def inner_face_box(face, shrink: float = 0.15) -> tuple[int, int, int, int]:
    """The middle of a :class:`~xportrait2_core.media.crops.FaceBox` as (left, top, right, bottom):
    what the head blend replaces, whatever the neighbouring faces do."""
    dx, dy = face.width * shrink, face.height * shrink
    return round(face.left + dx), round(face.top + dy), round(face.right - dx), round(face.bottom - dy)


def assert_marked_frame_shows_alone(change: np.ndarray, marked: int) -> None:
    """``change`` per output frame between a take and the same take with frame ``marked`` mirrored:
    the mark shows in its own frame, clearly more than anywhere else."""
    assert change.argmax() == marked, f"the marked driving frame shows at frame {change.argmax()}, not {marked}: {change}"
    assert change[marked] > FRAME_CHANGED, change
    assert change[marked] > MARK_OVER_OTHERS * np.delete(change, marked).max(), f"the mark shows in one frame: {change}"


def region_change(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Per frame, the mean absolute difference in levels between two ``(F, H, W, 3)`` uint8 videos
    inside ``box`` (left, top, right, bottom)."""
    left, top, right, bottom = box
    assert a.shape == b.shape, (a.shape, b.shape)
    crop = (slice(None), slice(top, bottom), slice(left, right))
    return np.abs(a[crop].astype(np.int16) - b[crop].astype(np.int16)).mean(axis=(1, 2, 3))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_16bit(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (grey for ``(H, W)``, RGB for ``(H, W, 3)`` uint16), written by hand because
    Pillow cannot write 16-bit colour."""
    colour_type = 0 if pixels.ndim == 2 else 2
    height, width = pixels.shape[:2]
    rows = pixels.astype(">u2").reshape(height, -1).tobytes()
    stride = len(rows) // height
    filtered = b"".join(b"\x00" + rows[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(filtered))
        + _png_chunk(b"IEND", b"")
    )


def write_decompression_bomb(path: Path, side: int = 15000) -> Path:
    """A PNG that says it is ``side`` x ``side`` RGB and holds a few bytes of pixel data: what a
    decompression bomb looks like to a reader that trusts the header."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(bytes(1024)))
        + _png_chunk(b"IEND", b"")
    )
    return path


def save_image(image: torch.Tensor, path: PathLike) -> None:
    """Write a ``(3, H, W)`` image (float in ``[0, 1]``, rounded to 8 bits, or uint8) as a PNG."""
    path = Path(path)
    try:
        Image.fromarray(to_uint8_hwc(image)).save(path, format="PNG")
    except OSError as error:
        raise MediaError(f"cannot write {path}: {error}") from error
