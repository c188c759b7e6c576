"""The ``xportrait2`` command line end to end, on real media and tiny random weights."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from harness import REPO_ROOT
from harness.media import media, save_image, write_driving_clip
from xportrait2_core.cli import main as cli
from xportrait2_core.media.images import load_image
from xportrait2_core.media.video_reader import iter_frames, probe_video

FAST = ["--steps", "2", "--offline"]


def run_cli(*args: str) -> tuple[int, str]:
    """The command line in a subprocess: exit status and everything it printed."""
    process = subprocess.run(
        [sys.executable, "-m", "xportrait2_core.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900
    )
    return process.returncode, process.stdout + process.stderr


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_animate_whole_picture_at_the_driving_frame_rate(weights, tmp_path):
    out = tmp_path / "photo.mp4"
    code, printed = run_cli("animate", str(media("photo_ref.png")), str(media("driving_60f.mp4")), "-o", str(out),
                            "--weights", str(weights), "--size", "256", *FAST)
    assert code == 0, printed
    for stage in ("detecting faces", "encoding motion", "sampling", "decoding"):
        assert f"{stage}: 100%" in printed, stage  # a progress bar per stage, which reaches its end
    info, driving = probe_video(out), probe_video(media("driving_60f.mp4"))
    source = load_image(media("photo_ref.png"))
    assert info.frame_count == 60 == sum(1 for _ in iter_frames(out))
    assert info.fps == driving.fps == Fraction(12000, 1001)
    assert (info.height, info.width) == tuple(source.shape[1:])
    assert not info.has_audio
    assert leftovers(tmp_path) == ["photo.mp4"]


def test_animate_crop_only_keeps_audio(weights, tmp_path):
    driving = tmp_path / "with_audio.mp4"
    write_driving_clip(driving, 10, source=media("driving_230f.mp4"), tone=True)
    out = tmp_path / "crop.mp4"
    assert cli(["animate", str(media("cartoon_ref.png")), str(driving), "-o", str(out), "--weights", str(weights),
                "--no-paste-back", "--context-frames", "6", "--context-overlap", "2", *FAST]) == 0
    info = probe_video(out)
    assert (info.frame_count, info.width, info.height) == (10, 512, 512)
    assert info.fps == probe_video(driving).fps == Fraction(25)
    assert info.has_audio
    with av.open(str(out)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"


def test_same_seed_same_video(weights, tmp_path):
    def frames(seed: str, name: str) -> list[np.ndarray]:
        out = tmp_path / name
        assert cli(["animate", str(media("photo_ref.png")), str(media("driving_60f.mp4")), "-o", str(out),
                    "--weights", str(weights), "--size", "128", "--max-frames", "4", "--no-paste-back",
                    "--seed", seed, *FAST]) == 0
        return [f.numpy() for f in iter_frames(out)]

    first, again, other = frames("3", "a.mp4"), frames("3", "b.mp4"), frames("4", "c.mp4")
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert any(not np.array_equal(a, c) for a, c in zip(first, other))


def test_ctrl_c_leaves_no_file(weights, tmp_path):
    out = tmp_path / "interrupted.mp4"
    process = subprocess.Popen(
        [sys.executable, "-m", "xportrait2_core.cli", "animate", str(media("photo_ref.png")),
         str(media("driving_60f.mp4")), "-o", str(out), "--weights", str(weights), "--size", "128",
         "--max-frames", "8", "--steps", "30", "--offline"],
        cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
        # A terminal delivers Ctrl-C; a shell's background job would have SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = ""
    deadline = time.monotonic() + 600
    while "sampling" not in seen and time.monotonic() < deadline:
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 130, seen + rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert leftovers(tmp_path) == []


def _flat_video(path: Path, frames: int, level: int = 90) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((128, 128, 3), level, np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _one_frame_of(source: Path, path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 512, 512, "yuv420p"
        frame = av.VideoFrame.from_ndarray(next(iter_frames(source)).numpy(), format="rgb24")
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _bad_inputs(tmp_path: Path, weights: Path) -> dict[str, tuple[list[str], str]]:
    photo, driving = str(media("photo_ref.png")), str(media("driving_60f.mp4"))
    blank = tmp_path / "blank.png"
    save_image(torch.full((3, 256, 256), 0.5), blank)
    (tmp_path / "empty.mp4").write_bytes(b"")
    data = media("driving_60f.mp4").read_bytes()
    (tmp_path / "corrupt.mp4").write_bytes(data[: len(data) // 3])
    _one_frame_of(media("driving_60f.mp4"), tmp_path / "one_frame.mp4")
    _flat_video(tmp_path / "no_face.mp4", 8)
    _flat_video(tmp_path / "black.mp4", 8, level=0)  # issue 34: black was "tracked" and animated
    save_image(torch.zeros(3, 512, 512), tmp_path / "black.png")
    save_image(torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(0)), tmp_path / "noise.png")
    (tmp_path / "existing.mp4").write_bytes(b"keep me")
    empty_weights = tmp_path / "no_weights"
    empty_weights.mkdir()
    (tmp_path / "takes").mkdir()
    (tmp_path / "renders.mp4").mkdir()
    out = str(tmp_path / "out.mp4")
    return {
        "no face in the source": ([str(blank), driving, "-o", out], "no face found"),
        "a black source": ([str(tmp_path / "black.png"), driving, "-o", out], "no face found in black.png"),
        "a source of noise": ([str(tmp_path / "noise.png"), driving, "-o", out], "no face found in noise.png"),
        "source is a video": ([driving, driving, "-o", out], "is a video"),
        "empty video": ([photo, str(tmp_path / "empty.mp4"), "-o", out], "empty"),
        "corrupt video": ([photo, str(tmp_path / "corrupt.mp4"), "-o", out], "corrupt.mp4"),
        "1-frame video": ([photo, str(tmp_path / "one_frame.mp4"), "-o", out], "at least 2"),
        "driving video without a face": ([photo, str(tmp_path / "no_face.mp4"), "-o", out], "no face found"),
        "a black driving video": (
            [photo, str(tmp_path / "black.mp4"), "-o", out], "no face found in any of the 4 frames of black.mp4"
        ),
        "output folder missing": ([photo, driving, "-o", str(tmp_path / "nowhere" / "out.mp4")], "does not exist"),
        "output exists": ([photo, driving, "-o", str(tmp_path / "existing.mp4")], "--overwrite"),
        "driving video is a folder": ([photo, str(tmp_path / "takes"), "-o", out], f"{tmp_path / 'takes'} is a folder, not a driving video"),
        "output is a folder": ([photo, driving, "-o", str(tmp_path / "renders.mp4"), "--overwrite"],
                               f"{tmp_path / 'renders.mp4'} is a folder: -o names the video file to write"),
        "missing weights": ([photo, driving, "-o", out, "--weights", str(empty_weights)], "not found"),
    }


def test_bad_input_gives_one_clear_message_and_no_output(weights, tmp_path, capsys):
    cases = _bad_inputs(tmp_path, weights)
    before = leftovers(tmp_path)
    for case, (args, expected) in cases.items():
        if "--weights" not in args:
            args = [*args, "--weights", str(weights)]
        code = cli(["animate", *args, "--max-frames", "4", "--size", "128", *FAST])
        err = capsys.readouterr().err
        assert code != 0, case
        assert expected in err, f"{case}: {err}"
        assert "Traceback" not in err, case
        assert len([line for line in err.splitlines() if line.startswith("xportrait2:")]) == 1, f"{case}: one line"
        assert leftovers(tmp_path) == before, case
    assert (tmp_path / "existing.mp4").read_bytes() == b"keep me"


def test_doctor_reports_found_and_missing(weights, tmp_path, capsys):
    assert cli(["doctor", "--weights", str(weights)]) == 0
    found = capsys.readouterr().out
    assert "everything needed is in place" in found
    assert found.count("ok ") == 7
    os.environ.pop("XPORTRAIT2_WEIGHTS", None)
    assert cli(["doctor", "--weights", str(tmp_path)]) == 1
    missing = capsys.readouterr().out
    assert "MISSING" in missing and "x-nemo-inference" in missing and "yunet_final.pth" in missing
    assert missing.count("x-nemo-inference") == 1, "where to get the four files is said once"
    assert f"  MISSING  xnemo_motion_encoder.pth (or xnemo_motion_encoder.safetensors) in {tmp_path}\n" in missing


def test_a_file_this_user_may_not_read_is_called_unreadable_not_damaged():
    """A portrait and a take without read permission, opened as the loaders of ``animate`` do, by
    another user where this runs as root (root reads through permission bits)."""
    folder = Path(tempfile.mkdtemp(prefix="xp2-unreadable-"))  # not in pytest's folders, which only their owner may enter
    try:
        folder.chmod(0o755)
        files = [folder / "portrait.png", folder / "take.mp4"]
        for file, source in zip(files, (media("photo_ref.png"), media("driving_60f.mp4"))):
            shutil.copyfile(source, file)
            file.chmod(0)
        program = (
            "import os, sys\n"
            "from xportrait2_core.media.images import MediaError, load_image\n"
            "from xportrait2_core.media.video_reader import probe_video\n"
            "if os.geteuid() == 0:  # become nobody, once this Python (under root's home) has started\n"
            "    os.setgroups([]), os.setgid(65534), os.setuid(65534)\n"
            "for load, path in zip((load_image, probe_video), sys.argv[1:]):\n"
            "    try:\n"
            "        load(path)\n"
            "    except MediaError as error:\n"
            "        print(error)\n"
        )
        result = subprocess.run([sys.executable, "-c", program, *map(str, files)], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=120, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    finally:
        shutil.rmtree(folder)
    assert result.stdout.splitlines() == [f"cannot read {file}: Permission denied" for file in files], result.stderr


def test_tiny_weights_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "something").write_text("x")
    assert cli(["tiny-weights", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_every_setting_is_checked_before_any_work(weights, tmp_path, capsys):
    photo, driving = str(media("photo_ref.png")), str(media("driving_60f.mp4"))
    broken = tmp_path / "broken_weights"
    shutil.copytree(weights, broken)
    (broken / "inference_xnemo_stage2.yaml").write_text("unet_additional_kwargs: {use_motion_module: [true\n")
    cases = {
        "output suffix": (["-o", str(tmp_path / "out.gif")], "out.gif: the output video must end in one of .m4v, .mkv, .mov, .mp4"),
        "no context frames": (["--context-frames", "0"], "context frames must be 1 to 32, got 0"),
        "overlap as long as the window": (["--context-overlap", "24"], "context overlap must be 0 to 23"),
        "huge size": (["--size", "1048576"], "--size must be a multiple of 64 from 64 to 2048, got 1048576"),
        "negative steps": (["--steps", "-3"], "steps must be 1 to 1000, got -3"),
        "nan guidance": (["--guidance", "nan"], "guidance must be a number from 0 to 30, got nan"),
        "unknown device": (["--device", "bogus"], "--device bogus: not a device"),
        "missing GPU": (["--device", "cuda:99"], "--device cuda:99: "),
        "output is the driving video": (["-o", driving, "--overwrite"], "is also an input of this run"),
        "malformed architecture file": (["--weights", str(broken)], f"{broken / 'inference_xnemo_stage2.yaml'}: not readable"),
    }
    for case, (options, expected) in cases.items():
        output = [] if "-o" in options else ["-o", str(tmp_path / "out.mp4")]
        weights_option = [] if "--weights" in options else ["--weights", str(weights)]
        code = cli(["animate", photo, driving, *output, *weights_option, *FAST, *options])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("xportrait2:")]
        assert code in (1, 2) and len(lines) == 1 and expected in lines[0], f"{case}: {err}"
        assert "Traceback" not in err and "detecting faces" not in err, f"{case}: refused before any work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken_weights"]


def test_sigterm_while_writing_leaves_no_file(weights, tmp_path):
    out = tmp_path / "terminated.mp4"
    process = subprocess.Popen(
        [sys.executable, "-m", "xportrait2_core.cli", "animate", str(media("photo_ref.png")),
         str(media("driving_60f.mp4")), "-o", str(out), "--weights", str(weights), "--size", "128", *FAST],
        cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
    )
    seen = ""
    deadline = time.monotonic() + 600
    while "decoding" not in seen and time.monotonic() < deadline:  # the partial file is being written
        seen += process.stderr.read(1)
    assert [p.name for p in tmp_path.iterdir() if ".partial." in p.name], "signalled while the video is written"
    process.send_signal(signal.SIGTERM)
    rest = process.communicate(timeout=120)[1]
    assert process.returncode == 143, seen + rest
    assert "terminated (SIGTERM)" in rest and "Traceback" not in rest
    assert leftovers(tmp_path) == []


def test_a_second_run_with_the_same_output_is_refused_while_the_first_runs(weights, tmp_path, capsys):
    """Two runs started together with one ``-o``: the first claims the name when it starts, the
    second is refused at once (with --overwrite too: that replaces a finished video, not one being
    made); a claim left by a killed run blocks nobody."""
    out = tmp_path / "shared.mp4"
    first = subprocess.Popen(
        [sys.executable, "-m", "xportrait2_core.cli", "animate", str(media("photo_ref.png")),
         str(media("driving_60f.mp4")), "-o", str(out), "--weights", str(weights), "--size", "128",
         "--max-frames", "8", "--steps", "30", "--offline"],
        cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True,
    )
    seen = ""
    deadline = time.monotonic() + 600
    while "detecting faces" not in seen and time.monotonic() < deadline:  # past the claim, before any file
        seen += first.stderr.read(1)
    assert not out.exists()
    try:
        for extra in ([], ["--overwrite"]):
            code = cli(["animate", str(media("cartoon_ref.png")), str(media("driving_60f.mp4")), "-o", str(out),
                        "--weights", str(weights), "--size", "128", "--max-frames", "4", *FAST, *extra])
            err = capsys.readouterr().err
            lines = [line for line in err.splitlines() if line.startswith("xportrait2:")]
            assert code == 1 and len(lines) == 1, err
            assert f"{out} is being written by another run (process {first.pid} on" in lines[0], err
            assert "detecting faces" not in err, "refused before any work"
    finally:
        first.send_signal(signal.SIGKILL)  # no clean-up can run: the claim's file stays behind
        first.communicate(timeout=120)
    assert not out.exists()
    from xportrait2_core.finished_files import OutputClaim

    with OutputClaim(out) as claim:  # the dead run's claim is no claim
        assert claim.path.is_file() and f"process {os.getpid()} on" in claim.path.read_text()
    assert not claim.path.exists()
