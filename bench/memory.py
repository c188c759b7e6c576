"""Peak resident memory of the whole chain (issue 6): ``xportrait2 animate`` on tiny random
weights for driving videos of growing length, each run in its own process.

Decoding the driving video, face tracking and crops, motion encoding, sampling, VAE decoding,
paste-back and MP4 writing all run; what should stay flat as the video grows is everything but
the small per-frame state (motion tokens, latents). Prints a table; asserts nothing.

With ``--faces 1 3`` it measures instead one portrait holding three faces (the shared portraits
side by side) animated with one and with all three faces: faces run one after another, so the
peak should not grow with their number.

With ``--pictures`` it measures the size of the pictures instead (issue 23): the shared photo
upscaled to 0.25, 3 and 12 megapixels with a 512 px take, and takes of 512 px, 1080p and 4K with
the 512 px photo; each peak also as a ratio to the 512 px run. ``--baseline CHECKOUT`` runs every
case with another checkout's code as well (an earlier commit, say), side by side.

    python bench/memory.py [--frames 30 120 300] [--size 128] [--steps 1] [--faces 1 3]
    python bench/memory.py --pictures [--frames 60] [--baseline ../old-checkout]
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

from harness.media import save_image, write_large_take  # noqa: E402
from xportrait2_core.media.images import load_image  # noqa: E402
from xportrait2_core.media.video_reader import iter_frames, probe_video  # noqa: E402
from xportrait2_core.media.video_writer import VideoWriter  # noqa: E402
from xportrait2_core.models.config import MotionEncoderConfig  # noqa: E402
from xportrait2_core.testing.tiny_weights import TINY_MOTION_ENCODER, write_tiny_weights  # noqa: E402


def looped_driving_video(source: Path, target: Path, frames: int) -> None:
    """``frames`` frames of ``source``, played forwards and backwards (no jump at the seams)."""
    clip = [frame for frame in iter_frames(source)]
    pingpong = clip + clip[-2:0:-1]
    with VideoWriter(target, probe_video(source).fps) as writer:
        for index in range(frames):
            writer.write(pingpong[index % len(pingpong)])


def peak_rss_of_run(arguments: list[str], code: Path = REPO_ROOT) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one command, measured for that process alone, importing
    the engine from the checkout ``code``."""
    started = time.perf_counter()
    environment = {**os.environ, "PYTHONPATH": str(code)}
    process = subprocess.Popen(arguments, cwd=code, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


def picture_sizes(args: argparse.Namespace, work: Path, weights: Path) -> None:
    from PIL import Image

    frames = args.frames[0]
    photo = SHARED_MEDIA / "photo_ref.png"
    take_512 = work / "take_512.mp4"
    looped_driving_video(SHARED_MEDIA / "driving_230f.mp4", take_512, frames)
    cases = [("portrait 512x512 (0.25 MP), take 512x512", photo, take_512)]
    for width, height in ((2000, 1500), (4000, 3000)):
        portrait = work / f"portrait_{width}x{height}.png"
        Image.open(photo).convert("RGB").resize((width, height), Image.LANCZOS).save(portrait, compress_level=1)
        cases.append((f"portrait {width}x{height} ({width * height / 1e6:.0f} MP), take 512x512", portrait, take_512))
    for width, height, name in ((1920, 1080, "1080p"), (3840, 2160, "4K")):
        take = write_large_take(work / f"take_{name}.mp4", frames, width, height, fps=25)
        cases.append((f"portrait 512x512, take {width}x{height} ({name})", photo, take))
    checkouts = [("this checkout", REPO_ROOT)] + ([("baseline", Path(args.baseline).resolve())] if args.baseline else [])
    print(f"whole chain on tiny random weights: --size {args.size}, --steps {args.steps}, {frames} frames; "
          "each run in its own process")
    header = "".join(f" | {name} MiB | x 512 px | s" for name, _ in checkouts)
    print(f"| case{header}" + (" | this / baseline |" if args.baseline else " |"))
    print("|---" * (1 + 3 * len(checkouts) + (1 if args.baseline else 0)) + "|")
    first: dict[str, float] = {}
    for label, portrait, take in cases:
        cells, peaks = [], []
        for name, code in checkouts:
            peak, wall = peak_rss_of_run([
                sys.executable, "-m", "xportrait2_core.cli", "animate", str(portrait), str(take), "-o",
                str(work / f"out_{len(peaks)}.mp4"), "--weights", str(weights), "--size", str(args.size),
                "--steps", str(args.steps), "--offline", "--overwrite",
            ], code)
            first.setdefault(name, peak)
            peaks.append(peak)
            cells.append(f" | {peak:.0f} | {peak / first[name]:.2f} | {wall:.1f}")
        ratio = f" | {peaks[0] / peaks[1]:.2f} |" if args.baseline else " |"
        print(f"| {label}{''.join(cells)}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[30, 120, 300])
    parser.add_argument("--size", type=int, default=128, help="generated square side (official 512)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--faces", type=int, nargs="+", help="measure these face counts of one group portrait instead")
    parser.add_argument("--pictures", action="store_true", help="measure portrait and take sizes instead")
    parser.add_argument("--baseline", help="with --pictures: another checkout to measure side by side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xp2-memory-") as work:
        work = Path(work)
        # A baseline from before the narrow test encoder reads only the official one.
        encoder = MotionEncoderConfig() if args.baseline else TINY_MOTION_ENCODER
        weights = write_tiny_weights(work / "weights", motion_encoder=encoder)
        (weights / "yunet_final.pth").write_bytes((SHARED_MEDIA / "yunet_final.pth").read_bytes())
        if args.faces:
            face_counts(args, work, weights)
            return
        if args.pictures:
            picture_sizes(args, work, weights)
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
