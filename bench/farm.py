"""Scaling of one long take over Ray workers (``xportrait2 animate --ray --workers N``).

On the tiny random weights and a loopback CPU Ray cluster of its own (in a loopback-only network
namespace, see harness/ray_cluster.py: run it as root), samples one long take in one process and
then with each step's windows shared among 1, 2, 4 workers, and prints a table: the sampling wall
time (of a second, warm run), the ratios to one worker and to one process, whether the latents
equal the one-process latents, and per step the bytes sent and received and the communication
share (the part of a step's wall time that is not the slowest worker's denoiser time: object
store, scheduling, serialisation). Run from the repository root with the ``farm`` and ``test``
extras::

    python bench/farm.py [--frames 240] [--size 64] [--steps 2] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.ray_cluster import loopback_ray_cluster  # noqa: E402
from xportrait2_core.context_windows import context_windows  # noqa: E402
from xportrait2_core.farm import RayWindowPool, ray_cluster  # noqa: E402
from xportrait2_core.sampling import predict_windows  # noqa: E402
from xportrait2_core.testing.tiny_take import tiny_take  # noqa: E402
from xportrait2_core.testing.tiny_weights import write_tiny_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    # One thread per process everywhere, so that one worker and one process do the same work.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        weights = write_tiny_weights(Path(folder) / "weights")
        pipeline, inputs = tiny_take(weights, args.frames, args.size, args.steps)
        windows = len(context_windows(args.frames, 24, 4, 0))
        print(f"take: {args.frames} frames at {args.size}x{args.size}, {args.steps} steps, {windows} windows a step, "
              f"tiny weights, fp32, CPU, 1 thread per process")
        step_seconds: list[float] = []

        def timed_here(conditioning, guided):
            # The engine's own window loop, timed per step like the pool's steps.
            def predictions(latents, timestep, windows):
                started = time.perf_counter()
                result = list(predict_windows(pipeline.models.denoiser, conditioning, guided, latents, timestep, windows))
                step_seconds.append(time.perf_counter() - started)
                return result
            return predictions

        # Every run is timed warm: a first, untimed run takes the one-time costs (allocations,
        # kernel choices, for the workers also their first object-store transfers).
        pipeline.sample(**inputs)
        single = pipeline.sample(**inputs, window_predictor=timed_here)
        one_process = sum(step_seconds)
        rows = []
        with loopback_ray_cluster(num_cpus=max(counts)) as cluster, ray_cluster(cluster.address):
            for count in counts:
                with RayWindowPool.start(weights, workers=count) as pool:
                    pipeline.sample(**inputs, window_predictor=pool)
                    pool.timings.clear()
                    latents = pipeline.sample(**inputs, window_predictor=pool)
                    timings = pool.timings
                wall = sum(t.wall_seconds for t in timings)
                rows.append((
                    count, wall,
                    sum(t.wall_seconds - t.compute_seconds for t in timings) / wall,
                    sum(t.bytes_out for t in timings) / len(timings) / 2**20,
                    sum(t.bytes_back for t in timings) / len(timings) / 2**20,
                    (latents - single).abs().max().item(),
                ))
    print(f"one process: {one_process:.2f} s of sampling steps")
    print(f"{'workers':>7} {'sampling s':>10} {'vs 1 worker':>11} {'vs 1 process':>12} {'comm share':>10} "
          f"{'MiB out/step':>12} {'MiB back/step':>13} {'max |diff|':>10}")
    base = rows[0][1]
    for count, wall, share, out, back, difference in rows:
        print(f"{count:>7} {wall:>10.2f} {base / wall:>10.2f}x {one_process / wall:>11.2f}x {share:>10.0%} "
              f"{out:>12.2f} {back:>13.2f} {difference:>10.1e}")


if __name__ == "__main__":
    main()
