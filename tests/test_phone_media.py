"""Footage from real phones and hostile files on the command line, every case built here from the
shared media: rotated, 10-bit, HEVC, variable-rate, odd-sized takes, the sound stored first or
missing; CMYK, 16-bit, palette and tiny-faced portraits; paths with spaces and non-ASCII
characters, and a folder that cannot be written. Each gives a correct video or one clear line,
and never leaves a partial file."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import REPO_ROOT
from harness.comfyui_pack import video_frames
from harness.media import (
    media,
    take_frames,
    write_large_take,
    write_decompression_bomb,
    write_phone_take,
    write_png_16bit,
)
from xportrait2_core.cli import main as cli
from xportrait2_core.media.video_reader import iter_frames, probe_video

FRAMES = 12
FAST = ["--steps", "2", "--offline", "--size", "64"]


def upright_pictures() -> list[np.ndarray]:
    """Real driving frames cut to 448 x 512 (taller than wide, so a missed turn changes the size)."""
    return [np.ascontiguousarray(picture[:, 32:480]) for picture in take_frames(FRAMES)]


def animate(portrait: Path, driving: Path, out: Path, weights: Path, *options: str) -> tuple[int, str]:
    """``xportrait2 animate`` in this process: exit status and what it printed to stderr."""
    from io import StringIO
    from contextlib import redirect_stderr

    err = StringIO()
    with redirect_stderr(err):
        code = cli(["animate", str(portrait), str(driving), "-o", str(out), "--weights", str(weights), *FAST, *options])
    return code, err.getvalue()


def crop_run(portrait: Path, driving: Path, out: Path, weights: Path) -> np.ndarray:
    code, printed = animate(portrait, driving, out, weights, "--no-paste-back")
    assert code == 0, printed
    return video_frames(out)


@pytest.fixture(scope="module")
def upright(weights, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("upright")
    take = write_phone_take(folder / "upright.mp4", upright_pictures(), pix_fmt="yuv444p", lossless=True)
    return {"take": take, "frames": crop_run(media("photo_ref.png"), take, folder / "out.mp4", weights)}


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_a_take_rotated_by_its_display_matrix_animates_as_the_upright_take(upright, weights, tmp_path, rotation):
    # Lossless 4:4:4 so that the stored (turned) pictures decode to exactly the upright ones: 4:2:0
    # chroma would be filtered differently once turned.
    take = write_phone_take(
        tmp_path / f"rotated{rotation}.mp4", upright_pictures(), rotation=rotation, pix_fmt="yuv444p", lossless=True
    )
    info = probe_video(take)
    assert (info.width, info.height) == (448, 512), "the size a viewer shows"
    assert np.array_equal(crop_run(media("photo_ref.png"), take, tmp_path / "out.mp4", weights), upright["frames"])


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_a_10_bit_take(weights, tmp_path, codec):
    pictures = upright_pictures()
    take = write_phone_take(tmp_path / "ten_bit.mp4", pictures, codec=codec, pix_fmt="yuv420p10le")
    read = torch.stack(list(iter_frames(take))).numpy().astype(np.int16)
    assert np.abs(read - np.stack(pictures)).mean() < 3, "read as the pictures it holds (within lossy coding)"
    code, printed = animate(media("photo_ref.png"), take, tmp_path / "out.mp4", weights)
    assert code == 0, printed
    assert probe_video(tmp_path / "out.mp4").frame_count == FRAMES


def test_a_variable_rate_take_lasts_as_long_at_its_average_rate(weights, tmp_path):
    steps_ms = [40, 40, 40, 200, 10, 10, 10, 10, 40, 40, 40, 40]  # a stall, then a burst
    starts = [Fraction(sum(steps_ms[:index]), 1000) for index in range(FRAMES)]
    take = write_phone_take(tmp_path / "vfr.mp4", upright_pictures(), starts=starts)
    code, printed = animate(media("photo_ref.png"), take, tmp_path / "out.mp4", weights)
    assert code == 0, printed
    source, result = probe_video(take), probe_video(tmp_path / "out.mp4")
    assert (result.frame_count, result.fps) == (source.frame_count, source.fps)


def test_an_odd_sized_take(weights, tmp_path):
    pictures = [np.asarray(Image.fromarray(picture).resize((721, 1279))) for picture in upright_pictures()]
    take = write_phone_take(tmp_path / "odd.mp4", pictures, pix_fmt="yuv444p")  # 4:2:0 needs even sides
    assert (probe_video(take).width, probe_video(take).height) == (721, 1279)
    code, printed = animate(media("photo_ref.png"), take, tmp_path / "out.mp4", weights)
    assert code == 0, printed
    assert probe_video(tmp_path / "out.mp4").frame_count == FRAMES


@pytest.mark.parametrize("audio", ["before", "after", None])
def test_the_sound_stored_before_the_video_or_missing(weights, tmp_path, audio):
    take = write_phone_take(tmp_path / "take.mp4", upright_pictures(), audio=audio)
    code, printed = animate(media("photo_ref.png"), take, tmp_path / "out.mp4", weights)
    assert code == 0, printed
    result = probe_video(tmp_path / "out.mp4")
    assert result.frame_count == FRAMES and result.has_audio == (audio is not None)


def cmyk_jpeg(path: Path) -> Path:
    Image.open(media("photo_ref.png")).convert("CMYK").save(path, quality=95)
    return path


def sixteen_bit_png(path: Path) -> Path:
    write_png_16bit(path, np.asarray(Image.open(media("photo_ref.png")).convert("RGB")).astype(np.uint16) * 257)
    return path


def palette_png_with_transparency(path: Path) -> Path:
    picture = Image.open(media("photo_ref.png")).convert("RGB").quantize(colors=255)
    picture.info["transparency"] = 0  # the first palette entry is see-through
    picture.save(path, transparency=0)
    return path


def tiny_face(path: Path) -> Path:
    """The photo shrunk to 96 px (a face of about 42 x 61) on a plain 512 x 512 canvas."""
    canvas = Image.new("RGB", (512, 512), (128, 128, 128))
    canvas.paste(Image.open(media("photo_ref.png")).convert("RGB").resize((96, 96), Image.LANCZOS), (200, 150))
    canvas.save(path)
    return path


@pytest.mark.parametrize("make", [cmyk_jpeg, sixteen_bit_png, palette_png_with_transparency, tiny_face])
def test_phone_and_odd_portraits(upright, weights, tmp_path, make):
    portrait = make(tmp_path / f"{make.__name__}{'.jpg' if make is cmyk_jpeg else '.png'}")
    code, printed = animate(portrait, upright["take"], tmp_path / "out.mp4", weights)
    assert code == 0, printed
    result = probe_video(tmp_path / "out.mp4")
    assert (result.width, result.height, result.frame_count) == (512, 512, FRAMES)


def test_a_9000_pixel_square_portrait_is_animated_at_the_largest_h264_frame(upright, weights, tmp_path):
    portrait = tmp_path / "huge.png"
    Image.open(media("photo_ref.png")).convert("RGB").resize((9000, 9000), Image.BILINEAR).save(portrait, compress_level=1)
    code, printed = animate(portrait, upright["take"], tmp_path / "out.mp4", weights, "--max-frames", "3")
    assert code == 0, printed
    assert "huge.png is 9000x9000 (81 million pixels): animated at 5970x5970, the largest frame H.264 video has" in printed
    result = probe_video(tmp_path / "out.mp4")
    assert (result.width, result.height, result.frame_count) == (5970, 5970, 3)


def test_a_decompression_bomb_is_one_line(upright, weights, tmp_path):
    portrait = write_decompression_bomb(tmp_path / "bomb.png")
    code, printed = animate(portrait, upright["take"], tmp_path / "out.mp4", weights)
    lines = [line for line in printed.splitlines() if line.startswith("xportrait2:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in printed, printed
    assert "bomb.png would decode to more than 179 million pixels" in lines[0]
    assert os.listdir(tmp_path) == ["bomb.png"]


def test_paths_with_spaces_and_non_ascii_characters(upright, weights, tmp_path):
    folder = tmp_path / "mes clips é"
    folder.mkdir()
    portrait = folder / "fotó ü 1.png"
    portrait.write_bytes(media("photo_ref.png").read_bytes())
    take = folder / "vidéo 1 ä.mp4"
    take.write_bytes(upright["take"].read_bytes())
    out = tmp_path / "sortie ø" / "résultat 1.mp4"
    out.parent.mkdir()
    code, printed = animate(portrait, take, out, weights)
    assert code == 0, printed
    assert probe_video(out).frame_count == FRAMES


@contextlib.contextmanager
def read_only_folder(folder: Path):
    """A folder nothing can write into: a read-only tmpfs where this runs as root (root writes
    through permission bits), else a folder without write permission."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "xp2-read-only", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_folder_is_one_line_before_any_work(upright, weights, tmp_path):
    with read_only_folder(tmp_path / "locked") as folder:
        code, printed = animate(media("photo_ref.png"), upright["take"], folder / "out.mp4", weights)
        assert os.listdir(folder) == []
    lines = [line for line in printed.splitlines() if line.startswith("xportrait2:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in printed, printed
    assert f"cannot write {folder / 'out.mp4'}: folder {folder} is read-only" in lines[0]
    assert "detecting faces" not in printed, "refused before any work"


@pytest.mark.long_take
def test_a_4k_take_at_60_fps_for_30_seconds(weights, tmp_path):
    """Every frame of a 4K phone take animates, with a progress bar per stage counting all of them
    (memory stays flat in the length: bench/memory.py measures it)."""
    take = write_large_take(tmp_path / "4k.mp4", frames=30 * 60)
    out = tmp_path / "out.mp4"
    process = subprocess.run(
        [sys.executable, "-m", "xportrait2_core.cli", "animate", str(media("photo_ref.png")), str(take), "-o", str(out),
         "--weights", str(weights), *FAST],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    result = probe_video(out)
    assert (result.frame_count, result.fps, result.width, result.height) == (1800, 60, 512, 512)
    for stage in ("detecting faces", "encoding motion", "decoding"):
        assert f"{stage}: 100%" in process.stderr and "1800/1800" in process.stderr, stage


def test_a_take_whose_timestamps_jump_is_one_line(weights, tmp_path):
    """Four frames, the last at 10 minutes: refused, not filled with 15,000 copies of the third."""
    starts = [Fraction(0), Fraction(4, 100), Fraction(8, 100), Fraction(600)]
    take = write_phone_take(tmp_path / "jump.mp4", upright_pictures()[:4], starts=starts)
    code, printed = animate(media("photo_ref.png"), take, tmp_path / "out.mp4", weights)
    lines = [line for line in printed.splitlines() if line.startswith("xportrait2:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in printed, printed
    assert "jump.mp4 has no frame for 599.9 s after 0.1 s" in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["jump.mp4"]
