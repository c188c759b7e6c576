"""What encoding a take once saves in a batch (``xportrait2 batch``, issue 31): one take driving N
portraits, rendered in one process with the models loaded once, with the take's motion encoded for
the first job alone (the batch's default) and encoded again for every job; then the same portraits
driven by a motion file made beforehand. Prints a table: wall time of the N renders, per job, of
the tracking and encoding each job skips, and whether every video equals the encode-every-time one.

On the tiny random weights (they time the face tracking and motion encoding, which do not depend
on the weights' size, and a sampling far cheaper than the real one: the saving as a share of a
real render is far smaller than here). Run from the repository root::

    python bench/motion_once.py [--portraits 4] [--frames 60] [--size 64] [--steps 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.comfyui_pack import video_frames  # noqa: E402
from harness.media import media, write_driving_clip  # noqa: E402
from xportrait2_core.animate import AnimateRequest, animate_files, load_all_models  # noqa: E402
from xportrait2_core.cli import main as cli  # noqa: E402
from xportrait2_core.sampling import SamplingSettings  # noqa: E402
from xportrait2_core.testing.tiny_weights import write_tiny_weights  # noqa: E402


def render_all(models, requests: list[AnimateRequest]) -> tuple[float, list[np.ndarray]]:
    started = time.perf_counter()
    for request in requests:
        animate_files(request, models=models)
    return time.perf_counter() - started, [video_frames(r.output) for r in requests]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--portraits", type=int, default=4)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        weights = folder / "weights"
        write_tiny_weights(weights)
        shutil.copyfile(media("yunet_final.pth"), weights / "yunet_final.pth")
        take = write_driving_clip(folder / "take.mp4", args.frames, source=media("driving_230f.mp4"))
        sources = [media("photo_ref.png"), media("cartoon_ref.png")]
        base = AnimateRequest(sources[0], take, folder / "x.mp4", weights, settings=SamplingSettings(steps=args.steps),
                              size=args.size, allow_download=False, device="cpu", overwrite=True)
        models = load_all_models(base)
        motion = folder / "take.motion.safetensors"

        def requests(tag: str, driving: Path) -> list[AnimateRequest]:
            return [dataclasses.replace(base, source=sources[i % 2], driving=driving, output=folder / f"{tag}{i}.mp4")
                    for i in range(args.portraits)]

        render_all(models, requests("warm", take)[:1])  # first-call costs out of the way
        every, every_videos = render_all(dataclasses.replace(models, encoded_takes=None), requests("every", take))
        once, once_videos = render_all(dataclasses.replace(models, encoded_takes=type(models.encoded_takes)()), requests("once", take))
        started = time.perf_counter()
        assert cli(["motion", str(take), "-o", str(motion), "--weights", str(weights), "--device", "cpu"]) == 0
        made = time.perf_counter() - started
        from_file, file_videos = render_all(models, requests("file", motion))
    n = args.portraits
    same = lambda videos: all(np.array_equal(a, b) for a, b in zip(videos, every_videos))  # noqa: E731
    print(f"\none take of {args.frames} frames driving {n} portraits, {args.size} px, {args.steps} steps, CPU, tiny weights\n")
    print(f"| {'run':44} | {'wall s':>7} | {'per job s':>9} | {'saved s':>7} | same video |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 11}|{'-' * 9}|------------|")
    print(f"| {'encoded for every job':44} | {every:7.1f} | {every / n:9.2f} | {0:7.1f} | yes        |")
    print(f"| {'encoded once (the batch default)':44} | {once:7.1f} | {once / n:9.2f} | {every - once:7.1f} | {'yes' if same(once_videos) else 'NO'}        |")
    print(f"| {'from a motion file (made in %.1f s)' % made:44} | {from_file:7.1f} | {from_file / n:9.2f} | {every - from_file:7.1f} | {'yes' if same(file_videos) else 'NO'}        |")
    print(f"\ntracking + encoding one take costs about {(every - once) / max(n - 1, 1):.2f} s here, paid once instead of {n} times")


if __name__ == "__main__":
    main()
