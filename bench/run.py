"""Benchmark of issue 6: our engine side by side with the official X-NeMo implementation.

    python bench/run.py --official-python PY --official-src SRC

prints these sections:

1. side by side on this machine (CPU, fp32): the same random weights in the official file
   layout, the same inputs, window offsets and noise, run by the official pipeline (in its own
   environment, a subprocess: ``official_server.py``) and by ours, interleaved repeat by repeat;
   times, ratios, and the difference of the final latents (speed is never bought with a
   different result);
2. FLOPs of one output frame at the official settings on the full-size model, ours and the
   official algorithm, with lower bounds on an H100 and on this CPU;
3. (whole-chain memory is measured by ``bench/memory.py`` and ``bench/comfyui_memory.py``);
4. a profile of our sampling run, by module kind and by operator.

The official side needs a checkout of bytedance/x-nemo-inference (``--official-src`` or
``$XNEMO_SRC``) and a Python with diffusers 0.26.3 (``--official-python`` or
``$XP2_OFFICIAL_PYTHON``); bench/README.md has the recipe. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(BENCH_DIR))

import fixture
import flops
import profile_ours
import torch
from official_import import REPLY_PREFIX
from ours import OursBench
from safetensors.torch import load_file

from xportrait2_core.models.config import OFFICIAL_ADDITIONAL_KWARGS, UNetConfig

SETUP_HINT = "see bench/README.md, 'The official side', for the setup"


# --------------------------------------------------------------------------------------------
# The official side, a subprocess in its own environment
# --------------------------------------------------------------------------------------------
class OfficialProcess:
    """``official_server.py``: one JSON request per line in, one ``@@bench`` line out."""

    def __init__(self, python: str, source: str, work: Path, threads: int):
        self.log_path = work / "official_stderr.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115  (open for the life of the subprocess)
        command = [
            python,
            str(BENCH_DIR / "official_server.py"),
            "--official-src",
            source,
            "--work",
            str(work),
            "--threads",
            str(threads),
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(REPLY_PREFIX):
                return json.loads(line[len(REPLY_PREFIX) :])
        self.log.flush()
        tail = self.log_path.read_text()[-3000:]
        raise RuntimeError(
            f"the official driver stopped (exit {self.process.wait()}); its stderr ends with:\n{tail}"
        )

    def run(self, task: str, **kwargs) -> float:
        self.process.stdin.write(json.dumps({"task": task, "kwargs": kwargs}) + "\n")
        self.process.stdin.flush()
        return self._read()["seconds"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"task": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)
        self.log.close()


def official_flops(
    python: str,
    source: str,
    latent_size: int,
    window: int,
    unet_config: Path | None = None,
) -> dict:
    command = [
        python,
        str(BENCH_DIR / "official_flops.py"),
        "--official-src",
        source,
        "--latent-size",
        str(latent_size),
        "--window",
        str(window),
    ]
    if unet_config is not None:
        command += ["--unet-config", str(unet_config)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        if line.startswith(REPLY_PREFIX):
            return json.loads(line[len(REPLY_PREFIX) :])
    raise RuntimeError(
        f"official FLOP count failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
    )


# --------------------------------------------------------------------------------------------
# Section 1: side by side
# --------------------------------------------------------------------------------------------
def interleaved(
    ours, official, task: str, repeats: int, **kwargs
) -> tuple[list[float], list[float]]:
    """Alternate the two sides repeat by repeat (and who goes first), so that load from other
    processes on the machine falls on both alike."""
    ours_times, official_times = [], []
    for repeat in range(repeats):
        order = [(ours, ours_times), (official, official_times)]
        for side, times in order if repeat % 2 == 0 else reversed(order):
            if side is not None:
                times.append(
                    getattr(side, task)(**kwargs)
                    if side is ours
                    else side.run(task, **kwargs)
                )
    return ours_times, official_times


def difference(ours: torch.Tensor, official: torch.Tensor) -> str:
    if ours.shape != official.shape:
        return (
            f"SHAPES DIFFER: ours {tuple(ours.shape)}, official {tuple(official.shape)}"
        )
    delta = ours.double() - official.double()
    relative = delta.norm() / official.double().norm().clamp_min(1e-30)
    return f"max |diff| {delta.abs().max().item():.2e}, relative L2 {relative.item():.2e} (max |official| {official.abs().max().item():.2f})"


def seconds_cell(times: list[float], per: int = 1) -> str:
    if not times:
        return "-"
    median = statistics.median(times) / per
    if len(times) == 1:
        return f"{median:.3f}"
    return f"{median:.3f} ({min(times) / per:.3f}-{max(times) / per:.3f})"


def ratio_cell(ours: list[float], official: list[float]) -> str:
    if not ours or not official:
        return "-"
    return f"{statistics.median(ours) / statistics.median(official):.2f}"


def side_by_side(args, work: Path, config: fixture.BenchConfig) -> OursBench:
    official = None
    if not args.ours_only:
        official = OfficialProcess(
            args.official_python, args.official_src, work, config.threads
        )
    bench = OursBench.from_work(work)
    compile_seconds = None
    if args.compile:
        bench.models.denoiser.compile(dynamic=False)
        started = time.perf_counter()
        bench.denoiser_call()  # compiles
        compile_seconds = time.perf_counter() - started
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    # Warm-up (first-call costs: kernel selection, allocator), also saves one denoiser output.
    interleaved(bench, official, "reference_pass", 1)
    interleaved(bench, official, "motion_frames", 1, count=2)
    interleaved(bench, official, "denoiser_call", 1, save=True)
    rows = []
    window = min(config.context_frames, config.frames)
    ref = interleaved(bench, official, "reference_pass", args.repeats)
    motion = interleaved(
        bench, official, "motion_frames", args.repeats, count=config.motion_batch
    )
    call = interleaved(bench, official, "denoiser_call", args.call_repeats)
    run = interleaved(bench, official, "sampling_run", 1, save=True)
    measured = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    windows = config.windows_per_step
    rows.append(
        (
            f"whole sampling run ({config.frames} frames, {config.steps} steps x {windows} windows)",
            run,
            1,
        )
    )
    rows.append((f"one denoiser call ({window} frames, CFG batch 2)", call, 1))
    rows.append(
        (
            "reference pass (official: batch 2 + fp16 bank copy; ours: batch 1 + k/v projection)",
            ref,
            1,
        )
    )
    rows.append(
        (
            f"motion encoding, per frame (batches of {config.motion_batch})",
            motion,
            config.motion_batch,
        )
    )

    print_header(
        "1. Side by side on this machine: official X-NeMo vs ours (seconds, median (min-max))"
    )
    print(f"config: {config.describe()}")
    levers = [] if compile_seconds is None else [f"torch.compile'd denoiser (first call compiled in {compile_seconds:.0f} s)"]
    print(
        f"ours: torch {torch.__version__}, threads {torch.get_num_threads()}, weights loaded in {bench.load_seconds:.1f} s; "
        f"levers: {', '.join(levers) or 'none'}"
    )
    if official is not None:
        info = official.info
        stand_in = (
            " (torchvision GaussianBlur re-stated: torchvision not installed)"
            if info["torchvision_stand_in"]
            else ""
        )
        print(
            f"official: torch {info['torch']}, diffusers {info['diffusers']}, threads {info['threads']}, "
            f"weights loaded in {info['load_seconds']:.1f} s{stand_in}"
        )
    print(f"{'operation':<84} {'official':>24} {'ours':>24} {'ours/off.':>9}")
    for name, (ours_times, official_times), per in rows:
        print(
            f"{name:<84} {seconds_cell(official_times, per):>24} {seconds_cell(ours_times, per):>24} "
            f"{ratio_cell(ours_times, official_times):>9}"
        )
    if official is not None:
        derived_official = [
            statistics.median(call[1])
            + window * statistics.median(motion[1]) / config.motion_batch
        ]
        print(
            f"{'one window as the sampling loop runs it (derived: official call + ' + str(window) + ' motion frames; ours call)':<84} "
            f"{seconds_cell(derived_official):>24} {seconds_cell(call[0]):>24} {ratio_cell(call[0], derived_official):>9}"
        )
        print("equality of results (same weights, inputs, offsets, noise; fp32):")
        for label, name in (
            ("final latents", "final_latents"),
            ("one denoiser call", "denoiser_call"),
        ):
            ours_value = load_file(str(work / f"ours_{name}.safetensors"))["value"]
            official_value = load_file(str(work / f"official_{name}.safetensors"))[
                "value"
            ]
            print(
                f"  {label:<18} {tuple(ours_value.shape)}: {difference(ours_value, official_value)}"
            )
        official.close()
    print(
        f"measured in {measured:.0f} s; load average {load_before:.1f} before, {load_after:.1f} after "
        f"({'other processes shared the CPU: compare ratios, not absolute times' if max(load_before, load_after) > config.threads + 0.5 else 'machine otherwise idle'})"
    )
    achieved_rates(args, work, config, call)
    return bench


def achieved_rates(args, work: Path, config: fixture.BenchConfig, call) -> None:
    """The denoiser call's FLOP rate at the benchmark size, against this CPU's matmul rate."""
    settings = flops.OfficialSettings(
        pixels=config.pixels, window=min(config.context_frames, config.frames)
    )
    unet_config = UNetConfig.from_dicts(
        fixture.unet2d_config_json(config), OFFICIAL_ADDITIONAL_KWARGS
    )
    ours = flops.our_component_flops(settings, unet_config)["guidance_call"]
    line = f"denoiser call at this size: ours {ours / 1e9:.0f} GFLOP -> {ours / statistics.median(call[0]) / 1e9:.1f} GFLOP/s"
    if call[1]:
        official = official_flops(
            args.official_python,
            args.official_src,
            config.latent_size,
            settings.window,
            work / fixture.UNET_DIR / "config.json",
        )["guidance_call"]
        line += f"; official {official / 1e9:.0f} GFLOP -> {official / statistics.median(call[1]) / 1e9:.1f} GFLOP/s"
    print(
        line
        + f" (fp32 matmul on these cores: {flops.cpu_matmul_rate(config.threads) / 1e9:.0f} GFLOP/s)"
    )


# --------------------------------------------------------------------------------------------
# Section 2: FLOPs at the official settings
# --------------------------------------------------------------------------------------------
FLOPS_MD = {
    "official": 141.2e12,
    "no waste": 123.3e12,
    "guidance call": 76.36e12,
    "no-waste call": 36.10e12 + 32.54e12,
}


def flops_section(args, threads: int) -> None:
    settings = flops.OfficialSettings(frames=args.flops_frames)
    ours = flops.our_component_flops(settings)
    official = official_flops(args.official_python, args.official_src, settings.latent_size, settings.window)
    vae = flops.vae_decode_flops_per_frame(settings)
    cpu_rate = flops.cpu_matmul_rate(threads)
    print_header(
        "2. FLOPs of one output frame, full-size model, official settings (1 multiply-add = 2 FLOPs)"
    )
    print(
        f"settings: {settings.describe()}; counted on the meta device with FlopCounterMode"
    )
    print(
        f"lower bounds: H100 at {flops.H100_DENSE_BF16 / 1e12:.0f} TFLOP/s dense bf16; this CPU at its measured "
        f"fp32 torch.mm rate, {cpu_rate / 1e9:.0f} GFLOP/s on {threads} cores"
    )
    per_frame = flops.per_output_frame(ours, official, settings)
    vae_cell = f"{vae / 1e12:.2f}" if vae else "n/a"
    print(
        f"{'TFLOP per output frame':<22} {'denoise':>9} {'motion':>8} {'refer.':>8} {'VAE dec.':>9} {'total':>8} "
        f"{'H100 s/frame (fps)':>19} {'CPU s/frame':>12}"
    )
    totals = {}
    for side in ("official", "ours"):
        if side == "official" and official is None:
            continue
        parts = per_frame[side]
        total = sum(parts.values()) + (vae or 0)
        totals[side] = total
        h100 = total / flops.H100_DENSE_BF16
        print(
            f"{side + ' algorithm' if side == 'official' else side:<22} {parts['denoise'] / 1e12:>9.2f} {parts['motion'] / 1e12:>8.3f} "
            f"{parts['reference'] / 1e12:>8.3f} {vae_cell:>9} {total / 1e12:>8.1f} {h100:>10.3f} ({1 / h100:>4.1f}) {total / cpu_rate:>12.0f}"
        )
    if "official" in totals:
        print(f"ours/official: {totals['ours'] / totals['official']:.3f}")
    print(
        "per call: "
        + "; ".join(
            part
            for part in (
                f"guidance call (24 frames, batch 2) ours {ours['guidance_call'] / 1e12:.2f} T"
                + (
                    f", official {official['guidance_call'] / 1e12:.2f} T"
                    if official
                    else ""
                ),
                f"motion encoder per frame ours {ours['motion_frame'] / 1e9:.1f} G"
                + (
                    f", official {official['motion_window'] / official['window'] / 1e9:.1f} G"
                    if official
                    else ""
                ),
                f"reference pass ours {ours['reference_unet_batch1'] / 1e9:.1f} G + k/v {ours['reference_keys_values'] / 1e9:.1f} G"
                + (
                    f", official {official['reference_pass_batch2'] / 1e9:.1f} G (batch 2)"
                    if official
                    else ""
                ),
            )
        )
    )
    print(
        f"../shared/perf/FLOPS.md (official code, N=120): official algorithm {FLOPS_MD['official'] / 1e12:.1f} T/frame, "
        f"same windows without waste {FLOPS_MD['no waste'] / 1e12:.1f} T/frame; guidance call {FLOPS_MD['guidance call'] / 1e12:.2f} T, "
        f"without waste {FLOPS_MD['no-waste call'] / 1e12:.2f} T."
    )
    print(
        "ours is below that no-waste figure because it also skips exact no-ops: the reference bank's keys/values are projected "
        "once instead of once per frame per call, and the CLIP cross-attention has a single key (softmax weight 1), so its "
        "query projection and per-token attention are skipped (output = to_out(to_v(e)) for every token)."
    )


# --------------------------------------------------------------------------------------------
# Section 4: profile of our sampling run
# --------------------------------------------------------------------------------------------
def profile_section(bench: OursBench, steps: int) -> None:
    total, modules, operators = profile_ours.profile_sampling(bench, steps)
    config = bench.config
    print_header(
        f"4. Profile of our sampling run ({config['frames']} frames, {steps} step(s), same config; "
        f"{total:.1f} s under the profilers)"
    )
    print(
        f"{'by module kind (wall time, rows add up)':<76} {'calls':>6} {'seconds':>8} {'share':>6}"
    )
    for name, calls, seconds in modules:
        print(f"{name:<76} {calls:>6} {seconds:>8.2f} {seconds / total:>6.1%}")
    print(
        f"{'by operator (self CPU time, top 12)':<76} {'calls':>6} {'seconds':>8} {'share':>6}"
    )
    for name, calls, seconds in operators:
        print(f"{name:<76} {calls:>6} {seconds:>8.2f} {seconds / total:>6.1%}")


# --------------------------------------------------------------------------------------------
def print_header(title: str) -> None:
    print()
    print(title)
    print("-" * len(title))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Issue 6 benchmark: ours vs the official X-NeMo code (see bench/README.md)."
    )
    parser.add_argument(
        "--official-python",
        default=os.environ.get("XP2_OFFICIAL_PYTHON"),
        help="Python of the official environment (diffusers 0.26.3), e.g. /tmp/oracle-venv/bin/python; "
        "default $XP2_OFFICIAL_PYTHON",
    )
    parser.add_argument(
        "--official-src",
        default=os.environ.get("XNEMO_SRC"),
        help="checkout of bytedance/x-nemo-inference, e.g. /tmp/xnemo/x-nemo-inference; default $XNEMO_SRC",
    )
    parser.add_argument(
        "--ours-only",
        action="store_true",
        help="skip the official side (no comparison)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="folder for weights, inputs and outputs (default: a new temporary folder, removed)",
    )
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--latent-size", type=int, default=32, help="latent height = width (pixels / 8)"
    )
    parser.add_argument(
        "--channels", default="64,128,256,256", help="block_out_channels of both UNets"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="repeats of the cheap measurements"
    )
    parser.add_argument(
        "--call-repeats",
        type=int,
        default=2,
        help="repeats of the denoiser call (after one warm-up)",
    )
    parser.add_argument(
        "--motion-batch", type=int, default=8, help="frames per motion-encoder timing"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=1,
        help="steps of the profiled sampling run",
    )
    parser.add_argument(
        "--flops-frames",
        type=int,
        default=120,
        help="video length for the per-frame FLOP count",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile our denoiser (compile time reported apart)")
    parser.add_argument("--skip-flops", action="store_true")
    parser.add_argument("--skip-profile", action="store_true")
    args = parser.parse_args(argv)
    if not args.ours_only:
        if not args.official_python or not Path(args.official_python).is_file():
            parser.error(
                f"--official-python (or $XP2_OFFICIAL_PYTHON) must name the official environment's python; {SETUP_HINT}"
            )
        if (
            not args.official_src
            or not (Path(args.official_src) / "src" / "pipelines").is_dir()
        ):
            parser.error(
                f"--official-src (or $XNEMO_SRC) must name a checkout of bytedance/x-nemo-inference; {SETUP_HINT}"
            )
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    config = fixture.BenchConfig(
        block_out_channels=tuple(int(c) for c in args.channels.split(",")),
        latent_size=args.latent_size,
        frames=args.frames,
        steps=args.steps,
        threads=args.threads,
        repeats=args.repeats,
        motion_batch=args.motion_batch,
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="xp2-bench-"))
    try:
        prepared = time.perf_counter()
        fixture.prepare(work, config)
        print(
            f"random official-layout weights and inputs written to {work} in {time.perf_counter() - prepared:.0f} s"
        )
        bench = side_by_side(args, work, config)
        if args.ours_only and not args.skip_flops:
            print("\n(FLOPs section skipped: the official algorithm's count needs the official side)")
        elif not args.skip_flops:
            flops_section(args, args.threads)
        if not args.skip_profile:
            profile_section(bench, args.profile_steps)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nbench/run.py took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
