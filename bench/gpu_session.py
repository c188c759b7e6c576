"""One prepared GPU session (issue 26), about 8 minutes on an H100/H200, one table at the end:

1. issue 16's lever table (``gpu_levers.run_levers``, what ``gpu.py --levers`` measures);
2. the low-VRAM rows: peak VRAM (``torch.cuda.max_memory_allocated``) and time of the whole
   ``sample`` call (reference pass, motion of every frame, ``--steps`` steps) at 512x512 for 120
   and 500 frames, with offload and guidance in sequence each off and on, as ratios to the row
   with both off, and the final latents' difference from that row.

    python bench/gpu_session.py                 # on the GPU machine
    python bench/gpu_session.py --smoke         # CPU, tiny networks: proves the script runs

Peak memory does not depend on the step count, so a few steps suffice; time ratios compare like
with like. Inside ComfyUI (Loader compile switch, --disable-dynamic-vram, --fast, attention
backends) is not measured here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import fixture
import gpu
import gpu_levers
import torch
from ours import OursBench

from xportrait2_core.low_vram import LowVramSettings
from xportrait2_core.models.config import MotionEncoderConfig
from xportrait2_core.testing.tiny_weights import TINY_MOTION_ENCODER

# (row name, offload, guidance in sequence); the first row is what the ratios are taken against.
LOW_VRAM_ROWS = (
    ("resident, guidance batched", False, False),
    ("offload", True, False),
    ("guidance in sequence", False, True),
    ("offload + guidance in sequence", True, True),
)
SMOKE = ["--device", "cpu", "--channels", "32,64,64,64", "--latent-size", "8", "--frames", "6,9",
         "--steps", "1", "--repeats", "1", "--equality-frames", "6", "--equality-steps", "1", "--step-frames", "6"]
NOT_MEASURED = "inside ComfyUI (Loader compile switch, --disable-dynamic-vram, --fast, attention backends)"


def low_vram_rows(models, work: Path, frames: int, steps: int, device: torch.device) -> list[dict]:
    """The four rows for one video length, on the same inputs."""
    config = gpu.video_config(frames, steps)
    inputs = fixture.make_inputs(config)
    rows = []
    for name, offload, in_sequence in LOW_VRAM_ROWS:
        # Every row starts as after loading: all three networks on the device.
        models.motion_encoder.to(device), models.reference_unet.to(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        bench = OursBench(models, inputs, asdict(config), work, LowVramSettings(offload, in_sequence))
        memory = gpu.MemoryMeter(device)
        seconds = bench.sampling_run()
        rows.append({"name": name, "frames": frames, "seconds": seconds, "peak": memory.peak(),
                     "latents": bench.last_latents.float().cpu()})
        print(f"  [low VRAM] {frames} frames, {name}: {seconds:.1f} s, peak {gpu.gib(rows[-1]['peak']):.2f} GiB", flush=True)
    return rows


def print_low_vram(rows: list[dict], steps: int, pixels: int) -> None:
    print(f"\nlow VRAM ({pixels}x{pixels}, {steps} steps, whole sample call; ratios against the first row of each length)")
    print(f"{'frames':>6} {'configuration':<32} {'peak GiB':>8} {'peak ratio':>10} {'s':>7} {'time ratio':>10} {'max |diff|':>10}")
    for row in rows:
        base = next(r for r in rows if r["frames"] == row["frames"])
        peak_ratio = f"{row['peak'] / base['peak']:.2f}" if base["peak"] else "-"
        difference = (row["latents"].double() - base["latents"].double()).abs().max().item()
        print(
            f"{row['frames']:>6} {row['name']:<32} {gpu.gib(row['peak']):>8.2f} {peak_ratio:>10} "
            f"{row['seconds']:>7.1f} {row['seconds'] / base['seconds']:>10.2f} {difference:>10.2e}"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny networks and lengths: " + " ".join(SMOKE))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--channels", help="block_out_channels (default: full size)")
    parser.add_argument("--latent-size", type=int, default=64)
    parser.add_argument("--frames", default="120,500", help="video lengths of the low-VRAM rows")
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps of the low-VRAM rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-levers", action="store_true")
    parser.add_argument("--equality-frames", type=int, default=48, help="length of the levers' equality run")
    parser.add_argument("--equality-steps", type=int, default=3)
    parser.add_argument("--step-frames", type=int, default=72, help="video length of the host-sync check")
    args = parser.parse_args(argv)
    if args.smoke:
        args = parser.parse_args([*SMOKE, *(argv if argv is not None else sys.argv[1:])])
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu_session.py needs a CUDA GPU (or --smoke)")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if args.channels:
        gpu.SIZE["block_out_channels"] = tuple(int(c) for c in args.channels.split(","))
    gpu.SIZE["latent_size"] = args.latent_size
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="xp2-gpu-session-"))
    motion = TINY_MOTION_ENCODER if args.smoke else MotionEncoderConfig()
    calibration = fixture.smooth_crops(2, torch.Generator().manual_seed(1))
    models = gpu.build_our_models(device, dtype, calibration, motion_config=motion)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)"
    print(f"device: {card}, torch {torch.__version__}, {dtype}; networks {gpu.SIZE}", flush=True)

    levers = None
    if not args.skip_levers:
        print("levers:", flush=True)
        # Lever benches keep the default low-VRAM settings: what a user's run does.
        levers = gpu_levers.run_levers(models, work, gpu.video_config, args)
        components = gpu.component_times(levers["call_bench"], args.repeats)
        fixed_120 = components["reference"] + 121 * components["motion_frame"]
        del levers["call_bench"], levers["equality_run"]
    warm = gpu.video_config(24, 1)  # kernels, cuDNN's algorithm choice, the allocator
    OursBench(models, fixture.make_inputs(warm), asdict(warm), work).sampling_run()
    rows = []
    for frames in (int(f) for f in args.frames.split(",")):
        rows += low_vram_rows(models, work, frames, args.steps, device)

    print(f"\nGPU session table ({card}, torch {torch.__version__}, {dtype})")
    if levers:
        gpu_levers.print_levers(levers, gpu.OUR_CALL_FLOPS, gpu.H100_DENSE, fixed_120)
    print_low_vram(rows, args.steps, args.latent_size * 8)
    print(f"not measured in this session: {NOT_MEASURED}")
    print(f"\nbench/gpu_session.py took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
