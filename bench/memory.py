"""Peak resident memory of the whole chain (issue 6): ``xportrait2 animate`` on tiny random
weights for driving videos of growing length, each run in its own process.

Decoding the driving video, face tracking and crops, motion encoding, sampling, VAE decoding,
paste-back and MP4 writing all run; what should stay flat as the video grows is everything but
the small per-frame state (motion tokens, latents). Prints a table; asserts nothing.

With ``--faces 1 3`` it measures instead one portrait holding three faces (the shared portraits
side by side) animated with one and with all three faces: faces run one after another, so the
peak should not grow with their number.

    python bench/memory.py [--frames 30 120 300] [--size 128] [--steps 1] [--faces 1 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO_ROOT.parent / "shared" / "media"
sys.path.insert(0, str(REPO_ROOT))

from harness.media import save_image  # noqa: E402
from xportrait2_core.media.images import load_image  # noqa: E402
from xportrait2_core.media.video_reader import iter_frames, probe_video  # noqa: E402
from xportrait2_core.media.video_writer import VideoWriter  # noqa: E402
from xportrait2_core.testing.tiny_weights import write_tiny_weights  # noqa: E402


def looped_driving_video(source: Path, target: Path, frames: int) -> None:
    """``frames`` frames of ``source``, played forwards and backwards (no jump at the seams)."""
    clip = [frame for frame in iter_frames(source)]
    pingpong = clip + clip[-2:0:-1]
    with VideoWriter(target, probe_video(source).fps) as writer:
        for index in range(frames):
            writer.write(pingpong[index % len(pingpong)])


def peak_rss_of_run(arguments: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one command, measured for that process alone."""
    started = time.perf_counter()
    process = subprocess.Popen(arguments, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed:\n{process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


PORTRAITS = ("photo_ref.png", "cartoon_ref.png")


def group_portrait(target: Path, faces: int) -> Path:
    """``faces`` shared portraits side by side (photo, cartoon, photo, ...)."""
    save_image(torch.cat([load_image(SHARED_MEDIA / PORTRAITS[i % 2]) for i in range(faces)], dim=2), target)
    return target


def face_counts(args: argparse.Namespace, work: Path, weights: Path) -> None:
    frames = args.frames[0]
    portrait = group_portrait(work / "group.png", max(args.faces))
    driving = work / f"driving_{frames}.mp4"
    looped_driving_video(SHARED_MEDIA / "driving_230f.mp4", driving, frames)
    print(f"{max(args.faces)}-face portrait {load_image(portrait).shape[2]}x{load_image(portrait).shape[1]}, "
          f"{frames} frames, the same driver for every face")
    print(f"{'faces':>6} {'peak RSS MiB':>13} {'wall s':>8}")
    peaks = []
    for count in args.faces:
        peak, wall = peak_rss_of_run([
            sys.executable, "-m", "xportrait2_core.cli", "animate", str(portrait), str(driving),
            "-o", str(work / f"faces_{count}.mp4"), "--weights", str(weights), "--faces",
            ",".join(str(i) for i in range(count)), "--size", str(args.size), "--steps", str(args.steps), "--offline",
        ])
        peaks.append(peak)
        print(f"{count:>6} {peak:>13.0f} {wall:>8.1f}")
    print(f"peak RSS ratio {args.faces[-1]}/{args.faces[0]} faces: {peaks[-1] / peaks[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[30, 120, 300])
    parser.add_argument("--size", type=int, default=128, help="generated square side (official 512)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--faces", type=int, nargs="+", help="measure these face counts of one group portrait instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xp2-memory-") as work:
        work = Path(work)
        weights = write_tiny_weights(work / "weights")
        (weights / "yunet_final.pth").write_bytes((SHARED_MEDIA / "yunet_final.pth").read_bytes())
        if args.faces:
            face_counts(args, work, weights)
            return
        print(f"whole chain on tiny random weights: --size {args.size}, --steps {args.steps}, "
              f"driving video = driving_230f.mp4 looped; each run in its own process")
        print(f"{'frames':>7} {'peak RSS MiB':>13} {'wall s':>8} {'s/frame':>8}")
        peaks = []
        for frames in args.frames:
            driving = work / f"driving_{frames}.mp4"
            looped_driving_video(SHARED_MEDIA / "driving_230f.mp4", driving, frames)
            peak, wall = peak_rss_of_run([
                sys.executable, "-m", "xportrait2_core.cli", "animate", str(SHARED_MEDIA / "photo_ref.png"),
                str(driving), "-o", str(work / f"out_{frames}.mp4"), "--weights", str(weights),
                "--size", str(args.size), "--steps", str(args.steps), "--offline",
            ])
            peaks.append(peak)
            print(f"{frames:>7} {peak:>13.0f} {wall:>8.1f} {wall / frames:>8.2f}")
        print(f"peak RSS ratio {args.frames[-1]}/{args.frames[0]} frames: {peaks[-1] / peaks[0]:.2f}")


if __name__ == "__main__":
    main()
