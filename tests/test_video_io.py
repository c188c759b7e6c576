"""Video reading and writing with PyAV, on the real driving videos and clips made here."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import textwrap
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from harness.media import media, psnr, write_clip_with_audio
from xportrait2_core.batch import write_report
from xportrait2_core.finished_files import current_umask, remove_abandoned_partial_files
from xportrait2_core.media.images import MediaError
from xportrait2_core.media.video_reader import iter_frames, probe_video
from xportrait2_core.media.video_writer import VideoWriter, exact_frame_rate, write_animation

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def first_frames() -> torch.Tensor:
    """The first 12 frames of the 60-frame driving video, uint8 (12, 512, 512, 3)."""
    return next(iter_frames(media("driving_60f.mp4"), chunk_size=12))


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize(
    "name, frames, fps",
    [("driving_230f.mp4", 230, Fraction(25)), ("driving_60f.mp4", 60, Fraction(12000, 1001))],
)
def test_probe_real_driving_videos(name, frames, fps):
    info = probe_video(media(name))
    assert (info.frame_count, info.width, info.height, info.has_audio) == (frames, 512, 512, False)
    assert info.fps == fps and isinstance(info.fps, Fraction)
    assert info.duration == pytest.approx(frames / fps, abs=0.05)


@pytest.mark.parametrize("name, frames", [("driving_230f.mp4", 230), ("driving_60f.mp4", 60)])
def test_real_videos_stream_all_their_frames_in_chunks(name, frames):
    sizes = []
    for chunk in iter_frames(media(name), chunk_size=32):
        assert chunk.dtype == torch.uint8 and chunk.shape[1:] == (512, 512, 3)
        sizes.append(len(chunk))
    assert sum(sizes) == frames
    assert all(size == 32 for size in sizes[:-1]) and 0 < sizes[-1] <= 32


def test_single_frames_and_max_frames():
    frames = list(iter_frames(media("driving_230f.mp4"), max_frames=5))
    assert len(frames) == 5 and frames[0].shape == (512, 512, 3)
    assert not torch.equal(frames[0], frames[4]), "consecutive frames of a real video differ"
    chunks = list(iter_frames(media("driving_230f.mp4"), max_frames=10, chunk_size=4))
    assert [len(chunk) for chunk in chunks] == [4, 4, 2]
    assert torch.equal(torch.cat(chunks)[:5], torch.stack(frames))


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001), Fraction(12000, 1001)])
def test_round_trip_keeps_count_size_exact_rate_and_pixels(tmp_path, first_frames, fps):
    path = tmp_path / "out.mp4"
    with VideoWriter(path, fps=fps) as writer:
        writer.write(first_frames[:5])  # a chunk
        for frame in first_frames[5:]:  # and single frames
            writer.write(frame)

    info = probe_video(path)
    assert (info.frame_count, info.width, info.height, info.has_audio) == (12, 512, 512, False)
    assert info.fps == fps
    read_back = torch.cat(list(iter_frames(path, chunk_size=8)))
    assert read_back.shape == first_frames.shape
    assert psnr(read_back, first_frames) > 40, "crf 12 is close to lossless"
    assert leftovers(tmp_path) == ["out.mp4"]


def test_float_frames_and_odd_size_are_padded_to_even(tmp_path, first_frames):
    odd = first_frames[:6, :301, :333]
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, fps=25) as writer:
        writer.write(odd.float() / 255.0)
    info = probe_video(path)
    assert (info.width, info.height, info.frame_count) == (334, 302, 6)
    read_back = torch.stack(list(iter_frames(path)))
    assert psnr(read_back[:, :301, :333], odd) > 38
    # the added row/column repeats the edge instead of adding a black line
    assert (read_back[:, 301].float() - read_back[:, 300].float()).abs().mean() < 4


def test_frame_rates_are_exact_fractions():
    assert exact_frame_rate(Fraction(30000, 1001)) == Fraction(30000, 1001)
    assert exact_frame_rate("30000/1001") == Fraction(30000, 1001)
    assert exact_frame_rate(30000 / 1001) == Fraction(30000, 1001)
    assert exact_frame_rate(25) == Fraction(25)
    with pytest.raises(MediaError):
        exact_frame_rate(0)


def test_audio_is_copied_without_reencoding_and_trimmed(tmp_path, first_frames):
    clip = tmp_path / "with_audio.mp4"
    write_clip_with_audio(clip, frame_count=50, fps=Fraction(25))  # 2 s of video and tone
    assert probe_video(clip).has_audio

    path = tmp_path / "dubbed.mp4"
    with VideoWriter(path, fps=Fraction(25), audio_from=clip) as writer:
        writer.write(first_frames)  # 12 frames = 0.48 s

    assert probe_video(path).has_audio
    with av.open(str(clip)) as source, av.open(str(path)) as output:
        source_audio, output_audio = source.streams.audio[0], output.streams.audio[0]
        assert output_audio.codec_context.name == "aac"
        assert output_audio.sample_rate == source_audio.sample_rate
        copied = [bytes(p) for p in output.demux(output_audio) if p.size]
        original = [bytes(p) for p in source.demux(source_audio) if p.size]
    assert copied == original[: len(copied)], "packets are copied, not re-encoded"
    audio_seconds = len(copied) * 1024 / 44100 - 1024 / 44100  # minus the AAC priming packet
    assert 0.48 <= audio_seconds < 0.48 + 2 * 1024 / 44100, "trimmed to the video, within a packet"


def test_audio_from_a_silent_video_writes_no_audio(tmp_path, first_frames):
    path = tmp_path / "silent.mp4"
    with VideoWriter(path, fps=25, audio_from=media("driving_60f.mp4")) as writer:
        writer.write(first_frames[:3])
    assert not probe_video(path).has_audio


def test_abort_leaves_nothing(tmp_path, first_frames):
    writer = VideoWriter(tmp_path / "out.mp4", fps=25)
    writer.write(first_frames[:3])
    writer.abort()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_while_writing_leaves_nothing(tmp_path, first_frames, error):
    with pytest.raises(error), VideoWriter(tmp_path / "out.mp4", fps=25) as writer:
        writer.write(first_frames[:3])
        raise error("interrupted")
    assert leftovers(tmp_path) == []


def test_no_frames_means_no_file(tmp_path):
    with pytest.raises(MediaError, match="no frames were written"), VideoWriter(tmp_path / "out.mp4", fps=25):
        pass
    assert leftovers(tmp_path) == []


def test_frames_of_another_size_are_refused(tmp_path, first_frames):
    with (
        pytest.raises(MediaError, match="differs from the first frame"),
        VideoWriter(tmp_path / "out.mp4", fps=25) as writer,
    ):
        writer.write(first_frames[:2])
        writer.write(first_frames[:2, :256])
    assert leftovers(tmp_path) == []


def test_missing_output_folder(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        VideoWriter(tmp_path / "no" / "out.mp4", fps=25)


def test_full_disk_raises_media_error_and_removes_the_partial_file(tmp_path):
    # A child process with a 50 kB file-size limit stands in for a full disk.
    script = textwrap.dedent(
        f"""
        import resource, signal, sys, torch
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from xportrait2_core.media.images import MediaError
        from xportrait2_core.media.video_writer import VideoWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
        noise = torch.randint(0, 256, (40, 128, 128, 3), dtype=torch.uint8)
        try:
            with VideoWriter({str(tmp_path / "out.mp4")!r}, fps=25) as writer:
                writer.write(noise)
        except MediaError as error:
            print("MediaError:", error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert f"MediaError: writing out.mp4 into {tmp_path} failed" in result.stdout, result.stdout + result.stderr
    assert leftovers(tmp_path) == []


def test_missing_video(tmp_path):
    with pytest.raises(MediaError, match="video not found.*none.mp4"):
        probe_video(tmp_path / "none.mp4")
    with pytest.raises(MediaError, match="not found"):
        iter_frames(tmp_path / "none.mp4")


def test_empty_video_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4 is empty"):
        probe_video(path)


def test_a_png_is_not_a_video():
    with pytest.raises(MediaError, match="photo_ref.png is a still image, not a video"):
        probe_video(media("photo_ref.png"))


def test_text_is_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video at all\n" * 50)
    with pytest.raises(MediaError, match="notes.mp4 is not a readable video"):
        probe_video(path)


@pytest.mark.parametrize("name", ["driving_230f.mp4", "driving_60f.mp4"])
@pytest.mark.parametrize("kept", [0.5, 0.002])
def test_truncated_videos_raise_media_error(tmp_path, name, kept):
    data = media(name).read_bytes()
    path = tmp_path / f"cut_{name}"
    path.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(MediaError, match=f"cut_{name}"):
        for _ in iter_frames(path, chunk_size=16):
            pass


def test_cut_mp4_is_caught_by_probe_before_decoding(tmp_path):
    data = media("driving_60f.mp4").read_bytes()  # index at the front, so the cut file still opens
    path = tmp_path / "download.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="download.mp4 is truncated"):
        probe_video(path)


def test_damaged_data_in_the_middle_raises_while_decoding(tmp_path):
    data = bytearray(media("driving_60f.mp4").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 200_000] = bytes(200_000)
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(data))
    frames = iter_frames(path, chunk_size=8)  # the start is fine
    with pytest.raises(MediaError, match="damaged.mp4 is damaged: decoding failed after"):
        for _ in frames:
            pass


def test_rotated_phone_video_is_read_upright(tmp_path):
    # Coded as a landscape 64x32 picture whose left half is white, with a display matrix saying
    # "turn 90 degrees clockwise", as phones record portrait video.
    path = tmp_path / "phone.mp4"
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = 255
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(-90)
        for index in range(3):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())

    info = probe_video(path)
    frame = next(iter_frames(path))
    assert (info.width, info.height) == (32, 64)
    assert frame.shape == (64, 32, 3)
    assert frame[:32].float().mean() > 250 and frame[32:].float().mean() < 5, "left edge turned to the top"


def test_an_in_memory_video_reads_and_gives_its_audio_like_the_file(tmp_path, first_frames):
    clip = tmp_path / "clip.mp4"
    write_clip_with_audio(clip, frame_count=20, fps=Fraction(30000, 1001))
    in_memory = io.BytesIO(clip.read_bytes())
    assert probe_video(in_memory) == probe_video(clip)
    from_file = torch.cat(list(iter_frames(clip, chunk_size=7)))
    assert torch.cat(list(iter_frames(in_memory, chunk_size=7))).equal(from_file)
    assert torch.cat(list(iter_frames(in_memory, chunk_size=7))).equal(from_file)  # rewound for every pass
    with VideoWriter(tmp_path / "out.mp4", fps=Fraction(30000, 1001), audio_from=in_memory) as writer:
        writer.write(first_frames[:20, :64, :64])
    with av.open(str(tmp_path / "out.mp4")) as written, av.open(str(clip)) as source:
        copied = [bytes(p) for p in written.demux(written.streams.audio[0]) if p.size]
        original = [bytes(p) for p in source.demux(source.streams.audio[0]) if p.size]
    assert copied and copied == original[: len(copied)]


def test_an_empty_in_memory_video_is_refused():
    with pytest.raises(MediaError, match="empty"):
        probe_video(io.BytesIO())


def _write_variable_rate_clip(path: Path, starts_ms: list[int]) -> None:
    """Frame i is a flat grey of level 20 * i + 10, shown from starts_ms[i]."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for index, start in enumerate(starts_ms):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 20 * index + 10, np.uint8), format="rgb24")
            frame.pts, frame.time_base = start, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_variable_frame_rate_is_read_at_a_constant_rate(tmp_path):
    # A phone-style clip: 40 ms frames, a 200 ms stall, then a burst of 10 ms frames.
    starts_ms = [0, 40, 80, 120, 320, 360, 370, 380, 390, 400, 440, 480]
    clip = tmp_path / "vfr.mp4"
    _write_variable_rate_clip(clip, starts_ms)
    fps = probe_video(clip).fps
    levels = [round((frame.float().mean().item() - 10) / 20) for frame in iter_frames(clip)]
    starts = [Fraction(ms, 1000) for ms in starts_ms] + [Fraction(10**9)]
    # Slot k shows the frame on screen in its middle, so sound and motion stay in sync.
    for slot, shown in enumerate(levels):
        middle = (slot + Fraction(1, 2)) / fps
        assert starts[shown] <= middle < starts[shown + 1] or shown == len(starts_ms) - 1, (slot, levels)
    assert levels == sorted(levels) and levels[0] == 0 and levels[-1] == len(starts_ms) - 1
    assert levels.count(3) >= 4  # the stall repeats the frame before it
    assert len(set(levels)) < len(starts_ms)  # the burst drops frames


def test_constant_rate_frames_pass_one_for_one(tmp_path):
    clip = tmp_path / "cfr.mp4"
    _write_variable_rate_clip(clip, [40 * index for index in range(12)])
    levels = [round((frame.float().mean().item() - 10) / 20) for frame in iter_frames(clip)]
    assert levels == list(range(12))


def as_chunks(frames: torch.Tensor, size: int) -> list[torch.Tensor]:
    """uint8 (N, H, W, 3) frames as the engine's (n, 3, H, W) chunks in [0, 1]."""
    return [chunk.permute(0, 3, 1, 2).float() / 255 for chunk in frames.split(size)]


def test_animation_chunks_are_written_whole_and_in_order(tmp_path, first_frames):
    path = tmp_path / "out.mp4"
    with VideoWriter(path, fps=25) as writer:
        write_animation(writer, iter(as_chunks(first_frames, 5)))
    read_back = torch.cat(list(iter_frames(path, chunk_size=8)))
    assert read_back.shape == first_frames.shape
    assert psnr(read_back, first_frames) > 40


class RecordingWriter:
    """Stands in for a VideoWriter: records what it encodes and on which thread."""

    def __init__(self, wait_for: threading.Event | None = None, fail_at: int | None = None):
        self.frames: list[torch.Tensor] = []
        self.threads: set[str] = set()
        self.wait_for, self.fail_at = wait_for, fail_at

    def write(self, frames: torch.Tensor) -> None:
        if len(self.frames) == self.fail_at:
            raise MediaError("disk full")
        if self.wait_for is not None and not self.frames:
            assert self.wait_for.wait(20), "the next chunk was not made while this one was encoded"
        self.threads.add(threading.current_thread().name)
        self.frames.append(frames)


def test_a_chunk_is_encoded_while_the_next_one_is_made(first_frames):
    chunks = as_chunks(first_frames, 4)
    next_chunk_started = threading.Event()

    def made():
        yield chunks[0]
        next_chunk_started.set()
        yield from chunks[1:]

    writer = RecordingWriter(wait_for=next_chunk_started)
    write_animation(writer, made())
    assert len(writer.frames) == 3 and all(torch.equal(w, c.permute(0, 2, 3, 1)) for w, c in zip(writer.frames, chunks))
    assert threading.current_thread().name not in writer.threads


def test_an_encoding_error_stops_the_chunks_and_reaches_the_caller(first_frames):
    chunks = as_chunks(first_frames, 2)
    made = []

    def counted():
        for chunk in chunks:
            made.append(chunk)
            yield chunk

    with pytest.raises(MediaError, match="disk full"):
        write_animation(RecordingWriter(fail_at=1), counted())
    assert len(made) <= 3, "at most one chunk is made ahead of the failed encoding"


def test_an_error_making_a_chunk_reaches_the_caller_after_the_earlier_chunks_are_written(first_frames):
    chunks = as_chunks(first_frames, 4)

    def failing():
        yield chunks[0]
        raise RuntimeError("decoder failed")

    writer = RecordingWriter()
    with pytest.raises(RuntimeError, match="decoder failed"):
        write_animation(writer, failing())
    assert len(writer.frames) == 1


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_finished_files_get_the_mode_the_users_umask_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        with VideoWriter(tmp_path / "out.mp4", 25) as writer:
            writer.write(torch.zeros((2, 16, 16, 3), dtype=torch.uint8))
        write_report([], tmp_path / "report.json")
    finally:
        os.umask(previous)
    for name in ("out.mp4", "report.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_the_same_frames_make_the_same_file_whatever_lies_in_memory(tmp_path):
    """Animated 64 px frames (smooth, as the decoder makes them) written ten times while memory is
    churned with random bytes: one file. With x264's macroblock tree on, such frames gave up to six
    different files in thirty writes."""
    torch.manual_seed(0)
    low = torch.rand(12, 3, 8, 8)
    frames = torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear").permute(0, 2, 3, 1)
    churn, digests = [], set()
    for attempt in range(10):
        churn.append([os.urandom(100 + 997 * k % 5000) for k in range(50)])
        path = tmp_path / f"take{attempt}.mp4"
        with VideoWriter(path, 25) as writer:
            writer.write(frames)
        digests.add(path.read_bytes())
    assert len(digests) == 1


def test_a_clean_up_removes_abandoned_partial_files_only(tmp_path):
    """What a killed writer left goes; a live writer's partial file and the user's files stay,
    however much they look like partial files."""
    nested = tmp_path / "video"
    nested.mkdir()
    users = ["take.mp4", ".hidden.mp4", "notes.partial.mp4", ".my.draft.partial.mp4", ".take.2026.partial.mp4"]
    for name in users:
        (nested / name).write_bytes(b"the user's")
    killed = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from xportrait2_core.media.video_writer import VideoWriter
        writer = VideoWriter({str(nested / "killed.mp4")!r}, fps=25)
        writer.write(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
        print("writing", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline() == "writing\n"
    killed.kill()
    killed.wait()
    with VideoWriter(nested / "live.mp4", fps=25) as live:
        live.write(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
        removed = remove_abandoned_partial_files(tmp_path)
        assert [path.name for path in removed] and all(path.name.startswith(".killed.") for path in removed), removed
        assert sorted(leftovers(nested)) == sorted(users + [live._temp_path.name])
    assert sorted(leftovers(nested)) == sorted(users + ["live.mp4"])
