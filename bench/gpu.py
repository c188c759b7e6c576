"""GPU benchmark: our engine at FULL size on one CUDA GPU, fp16, at the official settings
(512x512, 35 DDIM steps, guidance 2.5, 24-frame windows with overlap 4), and optionally the
official implementation beside it on the same weights.

    python bench/gpu.py [--official-src SRC] [--frames 24,120,500]

The weights are random (well-scaled normal values, skip-init layers filled on the GPU; no files
needed): speed and memory do not depend on their values, and nothing becomes NaN. CLIP and the
VAE are the same stand-ins as in ``run.py`` (given embedding and latent), so the table is the
X-NeMo part: reference pass, motion encoding of every frame, and the windowed sampling loop.

Long videos are run with fewer steps (``--long-steps`` above ``--max-full-frames``) and
extrapolated to 35 steps: fixed part (reference pass + motion encoding) + 35 x the measured
per-step time; the table says which rows are extrapolated.

With ``--official-src`` (a checkout of bytedance/x-nemo-inference) and diffusers 0.26.3 +
huggingface_hub 0.20.3 + transformers 4.38.1 importable, the official networks are built from
their configs, loaded with OUR random weights (the parameter names are the same, strict load),
and timed on the same inputs; final latents are compared. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import fixture
import gpu_levers
import torch
from ours import OursBench

from xportrait2_core.models.config import OFFICIAL_ADDITIONAL_KWARGS, MotionEncoderConfig, SchedulerConfig, UNetConfig
from xportrait2_core.models.motion_encoder import MotionEncoder
from xportrait2_core.models.operations import LayerFactory, skip_init_operations
from xportrait2_core.models.reference_unet import ReferenceUNet
from xportrait2_core.models.unet3d import DenoisingUNet3D
from xportrait2_core.weights.loading import XNemoModels

OFFICIAL_STEPS = 35
OUR_CALL_FLOPS = 66.79e12  # one guidance call at 512x512, 24 frames (bench/flops.py)
OFFICIAL_CALL_FLOPS = 76.36e12
H100_DENSE = 990e12


# The model size and sampling settings of one run; full size and the official settings by
# default (the options exist for a quick smoke test of this script on a CPU).
SIZE = {
    "block_out_channels": tuple(UNetConfig.official().block_out_channels),
    "latent_size": 64,
}


def video_config(frames: int, steps: int, seed: int = 0) -> fixture.BenchConfig:
    return fixture.BenchConfig(
        block_out_channels=SIZE["block_out_channels"],
        latent_size=SIZE["latent_size"],
        frames=frames,
        steps=steps,
        seed=seed,
        threads=torch.get_num_threads(),
    )


def build_our_models(
    device, dtype, calibration_crops: torch.Tensor, seed: int = 0, motion_config: MotionEncoderConfig = MotionEncoderConfig()
) -> XNemoModels:
    """The networks with random weights drawn on ``device`` (the motion encoder full size unless
    ``motion_config`` narrows it, for CPU smoke tests)."""
    config = UNetConfig.from_dicts(
        fixture.unet2d_config_json(video_config(24, 1)), OFFICIAL_ADDITIONAL_KWARGS
    )
    layers = LayerFactory(skip_init_operations, dtype=dtype, device=device)
    networks = [
        MotionEncoder(motion_config, layers).eval(),
        ReferenceUNet(config, layers).eval(),
        DenoisingUNet3D(config, layers).eval(),
    ]
    generator = torch.Generator(device).manual_seed(seed)
    for network in networks:
        fixture.randomise_(network, generator)
        network.requires_grad_(False)
    fixture.calibrate_motion_encoder_(networks[0], calibration_crops.to(device, dtype))
    return XNemoModels(
        networks[0], networks[1], networks[2], config, SchedulerConfig(), []
    )


class MemoryMeter:
    """Peak allocated memory on a CUDA device since creation (0 elsewhere)."""

    def __init__(self, device):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        return (
            torch.cuda.max_memory_allocated(self.device)
            if self.device.type == "cuda"
            else 0
        )


def median_seconds(function, repeats: int) -> float:
    return statistics.median(function() for _ in range(repeats))


def gib(count: int) -> float:
    return count / 2**30


class Side:
    """One implementation: ``make_bench(inputs, config dict)`` gives an object with the task
    methods of ``run.py``; ``motion_per_step``: the motion encoder runs inside every step (the
    official loop) rather than once per frame before the loop (ours)."""

    def __init__(self, name: str, make_bench, motion_per_step: bool):
        self.name = name
        self.make_bench = make_bench
        self.motion_per_step = motion_per_step


def component_times(bench, repeats: int) -> dict[str, float]:
    bench.reference_pass()
    bench.motion_frames(count=24)
    bench.denoiser_call()
    return {
        "reference": median_seconds(bench.reference_pass, repeats),
        "motion_frame": median_seconds(lambda: bench.motion_frames(count=24), repeats)
        / 24,
        "call": median_seconds(bench.denoiser_call, repeats),
    }


def video_run(
    side: Side, frames: int, steps: int, target_steps: int, components: dict, device
) -> dict:
    config = video_config(frames, steps)
    inputs = fixture.make_inputs(config)
    bench = side.make_bench(inputs, asdict(config))
    memory = MemoryMeter(device)
    seconds = bench.sampling_run()
    peak = memory.peak()
    latents = bench.last_latents.float()
    once = (
        1 if side.motion_per_step else frames + 1
    )  # the source face, and the driving frames when encoded once
    fixed = components["reference"] + once * components["motion_frame"]
    per_step = (seconds - fixed) / steps
    total = seconds if steps == target_steps else fixed + target_steps * per_step
    return {
        "frames": frames,
        "steps": steps,
        "seconds": seconds,
        "total_35": total,
        "extrapolated": steps != target_steps,
        "per_step": per_step,
        "peak_gib": gib(peak),
        "finite": bool(torch.isfinite(latents).all()),
        "latents": latents.cpu(),
    }


def print_side(
    name: str, components: dict, runs: list[dict], weights_gib: float, call_flops: float
) -> None:
    call = components["call"]
    print(
        f"\n{name}: weights {weights_gib:.2f} GiB on the GPU; reference pass {components['reference'] * 1e3:.0f} ms; "
        f"motion encoding {components['motion_frame'] * 1e3:.2f} ms/frame (batches of 24); "
        f"denoiser call (24 frames, CFG batch 2) {call * 1e3:.0f} ms = {call_flops / call / 1e12:.0f} TFLOP/s "
        f"({call_flops / call / H100_DENSE:.0%} of 990 dense fp16/bf16)"
    )
    print(
        f"{'frames':>6} {'steps run':>9} {'run s':>8} {'s, all steps':>14} {'fps':>6} {'s/frame':>8} {'peak VRAM GiB':>14} {'finite':>6}"
    )
    for r in runs:
        mark = "*" if r["extrapolated"] else " "
        print(
            f"{r['frames']:>6} {r['steps']:>9} {r['seconds']:>8.1f} {r['total_35']:>13.1f}{mark} "
            f"{r['frames'] / r['total_35']:>6.2f} {r['total_35'] / r['frames']:>8.3f} {r['peak_gib']:>14.2f} {r['finite']!s:>6}"
        )


@torch.no_grad()  # as the official pipeline; its motion encoder has a buffer that requires grad
def run_side(side: Side, frame_counts, args, device) -> tuple[dict, list[dict]]:
    warm = video_config(24, 2)
    bench = side.make_bench(fixture.make_inputs(warm), asdict(warm))
    bench.sampling_run()  # warm-up: kernels, cuDNN algorithm choice, allocator
    components = component_times(bench, args.repeats)
    runs = []
    for frames in frame_counts:
        steps = args.steps if frames <= args.max_full_frames else args.long_steps
        runs.append(video_run(side, frames, steps, args.steps, components, device))
        print(
            f"  [{side.name}] {frames} frames, {steps} steps: {runs[-1]['seconds']:.1f} s",
            flush=True,
        )
    return components, runs


def our_side(models: XNemoModels, work: Path, name: str = "ours") -> Side:
    return Side(name, lambda inputs, config: OursBench(models, inputs, config, work), motion_per_step=False)


def official_side(
    source: Path, our_models: XNemoModels, device, dtype, work: Path
) -> tuple[Side, float]:
    """The official networks with our weights (strict loads: the names are the same)."""
    import official_flops
    import official_import
    import official_server

    official = official_import.import_official(source)
    config_2d = {
        k: v
        for k, v in fixture.unet2d_config_json(video_config(24, 1)).items()
        if not k.startswith("_")
    }
    networks = official_flops.build_official_networks(
        official, source, device, dtype, config_2d=config_2d
    )
    networks.reference_unet.load_state_dict(
        our_models.reference_unet.state_dict(), strict=True
    )
    networks.denoising_unet.load_state_dict(
        our_models.denoiser.state_dict(), strict=True
    )
    networks.motion_encoder.load_state_dict(
        our_models.motion_encoder.state_dict(), strict=True
    )
    weights = sum(
        p.numel() * p.element_size()
        for n in (
            networks.reference_unet,
            networks.denoising_unet,
            networks.motion_encoder,
        )
        for p in n.parameters()
    )
    make = lambda inputs, config: official_server.OfficialBench(
        official, networks, inputs, config, work
    )
    return Side("official", make, motion_per_step=True), gib(weights)


KERNEL_KINDS = (
    ("attention (SDPA kernels)", ("flash", "fmha", "attention", "attn")),
    ("convolutions", ("fprop_implicit", "conv", "winograd", "dgrad")),
    (
        "matrix products (GEMM)",
        ("gemm", "nvjet", "cutlass", "xmma", "cublas", "matmul", "gemv"),
    ),
    ("normalisation", ("norm", "welford", "layer_norm", "group_norm")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next(
        (kind for kind, words in KERNEL_KINDS if any(w in lowered for w in words)),
        "element-wise, copies, other",
    )


@torch.no_grad()
def profile_call(models: XNemoModels, work: Path, device) -> None:
    """Where one denoiser call's GPU time goes: by module kind (synchronised hooks) and by kernel."""
    import profile_ours
    from torch.profiler import ProfilerActivity, profile

    config = video_config(24, 1)
    bench = OursBench(models, fixture.make_inputs(config), asdict(config), work)
    for _ in range(3):
        bench.denoiser_call()
    synchronize = (
        torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    )
    with profile_ours.timed_modules(models, synchronize=synchronize) as timer:
        total = bench.denoiser_call()
    print(
        f"\nprofile of one denoiser call (24 frames, CFG batch 2), module kinds timed with synchronising hooks: {total * 1e3:.0f} ms"
    )
    for kind, seconds in sorted(timer.seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<72} {timer.calls[kind]:>4} calls {seconds * 1e3:>8.1f} ms")
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if synchronize else []
    )
    with profile(activities=activities, record_shapes=True) as profiler:
        bench.denoiser_call()
    events = [e for e in profiler.key_averages() if e.self_device_time_total > 0]
    # kernels are the device-side events; CPU operators also carry their kernels' time
    kernels = [e for e in events if e.device_type.name != "CPU"] or events
    gpu_total = sum(e.self_device_time_total for e in kernels) or 1.0
    by_kind: dict[str, float] = {}
    for e in kernels:
        by_kind[kernel_kind(e.key)] = (
            by_kind.get(kernel_kind(e.key), 0.0) + e.self_device_time_total
        )
    print(f"GPU kernel time {gpu_total / 1e3:.0f} ms, by kind:")
    for kind, micros in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<40} {micros / 1e3:>8.1f} ms {micros / gpu_total:>6.1%}")
    print("top kernels:")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:14]:
        print(
            f"  {e.key[:96]:<96} {e.count:>5} {e.self_device_time_total / 1e3:>8.1f} ms {e.self_device_time_total / gpu_total:>6.1%}"
        )
    # Which operators (and tensor shapes) launched the kernels: the memory-bound ones are fusion candidates.
    operators = [
        e
        for e in profiler.key_averages(group_by_input_shape=True)
        if e.device_type.name == "CPU"
        and e.key.startswith("aten::")
        and e.self_device_time_total > 0
    ]
    print("top operators by GPU time (input shapes):")
    for e in sorted(operators, key=lambda e: -e.self_device_time_total)[:22]:
        shapes = ", ".join(str(tuple(s)) for s in e.input_shapes if s)[:70]
        print(
            f"  {e.key:<40} {shapes:<70} {e.count:>4} {e.self_device_time_total / 1e3:>7.1f} ms"
        )


def svd_vae(device, dtype, work: Path):
    """The SVD temporal VAE at full size with random weights, through our own loader class."""
    from diffusers import AutoencoderKLTemporalDecoder

    from xportrait2_core.weights.standalone_models import TemporalVae

    folder = work / "svd-vae"
    AutoencoderKLTemporalDecoder(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=2
    ).save_pretrained(str(folder))
    return TemporalVae(folder, device, dtype)


@torch.no_grad()
def decode_rows(models: XNemoModels, device, dtype, work: Path, frames: int) -> dict:
    """VAE decode of ``frames`` frames in 25-frame clips and MP4 writing: one after the other, and
    overlapped (``write_animation``: encoding on a background thread)."""
    from xportrait2_core.media.video_writer import write_animation
    from xportrait2_core.media.video_writer import VideoWriter
    from xportrait2_core.pipeline import XPortrait2Pipeline

    vae = svd_vae(device, dtype, work)
    pipeline = XPortrait2Pipeline(models, None, None, vae.decode)
    size = SIZE["latent_size"]
    latents = torch.randn((1, 4, frames, size, size), generator=torch.Generator().manual_seed(2)).to(device, dtype)
    list(pipeline.decode(latents[:, :, :25]))  # warm-up
    gpu_levers.synchronize(device)
    started = time.perf_counter()
    for chunk in pipeline.decode(latents):
        chunk.cpu()
    gpu_levers.synchronize(device)
    decode_only = time.perf_counter() - started
    timings = {"decode_only_s": decode_only}
    for name, overlapped in (("sequential_s", False), ("overlapped_s", True)):
        path = work / f"decode-{name}.mp4"
        started = time.perf_counter()
        with VideoWriter(path, 25) as writer:
            if overlapped:
                write_animation(writer, pipeline.decode(latents))
            else:
                for chunk in pipeline.decode(latents):
                    writer.write(chunk.permute(0, 2, 3, 1).cpu())
        timings[name] = time.perf_counter() - started
    timings["frames"] = frames
    print(f"  decode + write: {timings}", flush=True)
    return timings


def compile_only(models: XNemoModels, work: Path, frame_counts: list[int], args, device, card: str, weights: float) -> None:
    """``torch.compile`` rows (each mode alone) and, while compiled, the video runs."""

    def videos(mode: str):
        return run_side(our_side(models, work, name=f"ours, compiled ({mode})"), frame_counts, args, device)

    result = gpu_levers.compile_section(models, work, video_config, args, videos)
    print(f"\nGPU table ({card}); torch.compile of the denoiser, plain eager call {result['plain_call'] * 1e3:.1f} ms")
    print(f"host syncs in the sampling loop: {result['sync_check']}")
    for row in result["compile_rows"]:
        if "error" in row:
            print(f"{row['lever']}: failed: {row['error']}")
            continue
        print(
            f"{row['lever']}: compile {row['compile_s']:.1f} s, again with warm caches {row['warm_cache_compile_s']:.1f} s; "
            f"call {row['seconds'] * 1e3:.1f} ms ({row['speedup']:.2f}x, {OUR_CALL_FLOPS / row['seconds'] / H100_DENSE:.0%} MFU); "
            f"final latents vs eager: rel L2 {row['rel_l2']:.2e}, max |diff| {row['max_abs']:.2e}"
        )
        if "runs" in row:
            print_side(row["lever"], *row["runs"], weights, OUR_CALL_FLOPS)
    if args.json:
        rows = [{k: v for k, v in r.items() if k != "runs"} | {"runs": [{k: v for k, v in x.items() if k != "latents"} for x in r.get("runs", (None, []))[1]]} for r in result["compile_rows"]]
        args.json.write_text(json.dumps({"card": card, "plain_call": result["plain_call"], "sync_check": result["sync_check"], "compile_rows": rows}, indent=1, default=str))


def difference(ours: torch.Tensor, official: torch.Tensor) -> str:
    delta = ours.double() - official.double()
    relative = (delta.norm() / official.double().norm()).item()
    return (
        f"max |diff| {delta.abs().max().item():.2e}, relative L2 {relative:.2e} "
        f"(max |official| {official.abs().max().item():.2f})"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--frames", default="24,120,500", help="video lengths (comma separated)"
    )
    parser.add_argument(
        "--max-full-frames",
        type=int,
        default=120,
        help="longer videos run --long-steps steps and are extrapolated",
    )
    parser.add_argument("--long-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--official-src",
        type=Path,
        help="checkout of bytedance/x-nemo-inference (needs diffusers 0.26.3)",
    )
    parser.add_argument(
        "--official-frames",
        default="24,120",
        help="video lengths for the official side",
    )
    parser.add_argument("--steps", type=int, default=OFFICIAL_STEPS)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one denoiser call of ours (module kinds, kernels)",
    )
    parser.add_argument("--profile-only", action="store_true", help="only the profile")
    parser.add_argument(
        "--device",
        default="cuda",
        help="cpu with --channels/--latent-size only for a smoke test",
    )
    parser.add_argument("--channels", help="block_out_channels (default: full size)")
    parser.add_argument("--latent-size", type=int, default=64)
    parser.add_argument("--levers", action="store_true", help="measure each lever of issue 16 alone, then run the videos with the ones worth keeping")
    parser.add_argument("--equality-frames", type=int, default=48, help="length of the equality rows' sampling run")
    parser.add_argument("--equality-steps", type=int, default=3)
    parser.add_argument("--step-frames", type=int, default=120, help="video length of the host-sync check's sampling loop")
    parser.add_argument("--plain-frames", type=int, default=120, help="also run this length without levers (--long-steps, extrapolated)")
    parser.add_argument("--compile-modes", default="default,reduce-overhead", help="torch.compile modes to measure (empty: none)")
    parser.add_argument("--decode-frames", type=int, default=120, help="VAE decode + MP4 writing of this many frames (0: skip)")
    parser.add_argument("--compile-only", action="store_true", help="only torch.compile: its rows and the videos with the compiled denoiser")
    parser.add_argument("--sync-only", action="store_true", help="only the host-sync check of the sampling loop")
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU (or --device cpu for a smoke test)")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if args.channels:
        SIZE["block_out_channels"] = tuple(int(c) for c in args.channels.split(","))
    SIZE["latent_size"] = args.latent_size
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="xp2-gpu-"))
    calibration = fixture.smooth_crops(2, torch.Generator().manual_seed(1))
    models = build_our_models(device, dtype, calibration)
    weights = gib(
        sum(
            p.numel() * p.element_size()
            for n in (models.motion_encoder, models.reference_unet, models.denoiser)
            for p in n.parameters()
        )
    )
    card = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "CPU (smoke test)"
    )
    print(
        f"device: {card}, torch {torch.__version__} (CUDA {torch.version.cuda}), {dtype}; "
        f"networks {SIZE} with random weights built in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    if args.profile or args.profile_only:
        profile_call(models, work, device)
        if args.profile_only:
            return
    frame_counts = [int(f) for f in args.frames.split(",")]
    if args.compile_only:
        compile_only(models, work, frame_counts, args, device, card, weights)
        return
    if args.sync_only:
        call_bench, _, _ = gpu_levers.lever_benches(models, work, video_config, args)
        print(f"host syncs in the sampling loop: {gpu_levers.sync_check(gpu_levers.LeverProblem(call_bench, args.step_frames))}")
        return
    levers = None
    if args.levers:
        print("levers:", flush=True)
        levers = gpu_levers.run_levers(models, work, video_config, args)
    switch = levers["kept_switch"] if levers else contextlib.nullcontext
    kept = ", ".join(levers["kept"]) if levers and levers["kept"] else "none"
    with switch():
        components, runs = run_side(our_side(models, work), frame_counts, args, device)
    plain_result = None
    if levers and levers["kept"] and args.plain_frames:
        plain_args = argparse.Namespace(**{**vars(args), "max_full_frames": 0})
        plain_result = run_side(our_side(models, work, name="ours plain"), [args.plain_frames], plain_args, device)

    official_result = None
    if args.official_src is not None:
        try:
            side, official_weights = official_side(
                args.official_src, models, device, dtype, work
            )
            official_frames = [int(f) for f in args.official_frames.split(",")]
            official_result = (
                official_weights,
                *run_side(side, official_frames, args, device),
            )
            del side
        except Exception:  # noqa: BLE001  (the official stack is optional here; report why it did not run)
            print("official side failed:\n" + traceback.format_exc(), flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if levers and args.compile_modes:
        print("torch.compile:", flush=True)
        levers["compile_rows"] = gpu_levers.compile_rows(
            levers["call_bench"], levers["equality_run"], levers["plain_call"], levers["plain_latents"],
            args.compile_modes.split(","), args.repeats,
        )
    decoding = None
    if args.decode_frames:
        try:
            decoding = decode_rows(models, device, dtype, work, args.decode_frames)
        except Exception:  # noqa: BLE001  (needs diffusers and PyAV; report why it did not run)
            print("decode section failed:\n" + traceback.format_exc(), flush=True)

    pixels = SIZE["latent_size"] * 8
    settings = (
        f"{pixels}x{pixels}, {args.steps} DDIM steps, guidance 2.5, windows 24/overlap 4; "
        f"* = run with {args.long_steps} steps, extrapolated to {args.steps}"
    )
    print(f"\nGPU table ({card}; {settings})")
    fixed_120 = components["reference"] + 121 * components["motion_frame"]
    if levers:
        gpu_levers.print_levers(levers, OUR_CALL_FLOPS, H100_DENSE, fixed_120)
    print_side(f"ours (xportrait2_core; kept levers: {kept})", components, runs, weights, OUR_CALL_FLOPS)
    if plain_result is not None:
        print_side("ours, plain (no levers)", *plain_result, weights, OUR_CALL_FLOPS)
    if decoding is not None:
        by_frames = {r["frames"]: r for r in runs}
        sampling = by_frames.get(decoding["frames"])
        line = (
            f"\nVAE decode (SVD temporal decoder, 25-frame clips) + MP4 writing of {decoding['frames']} frames: "
            f"decode alone {decoding['decode_only_s']:.1f} s, decode then write {decoding['sequential_s']:.1f} s, "
            f"overlapped {decoding['overlapped_s']:.1f} s ({decoding['sequential_s'] / decoding['overlapped_s']:.2f}x)"
        )
        if sampling is not None:
            line += (
                f"; end to end (sampling at {args.steps} steps + decode + write): "
                f"{decoding['frames'] / (sampling['total_35'] + decoding['overlapped_s']):.2f} fps"
            )
        print(line)
    if official_result is not None:
        official_weights, official_components, official_runs = official_result
        print_side(
            "official (x-nemo-inference @ acaa1d0, diffusers 0.26.3)",
            official_components,
            official_runs,
            official_weights,
            OFFICIAL_CALL_FLOPS,
        )
        ours_by_frames = {r["frames"]: r for r in runs}
        print("\nours vs official (same weights, inputs, offsets, noise; fp16):")
        for r in official_runs:
            mine = ours_by_frames.get(r["frames"])
            if mine is not None:
                memory = (
                    f"{mine['peak_gib'] / r['peak_gib']:.2f}" if r["peak_gib"] else "-"
                )
                same = f"; final latents {difference(mine['latents'], r['latents'])}" if mine["steps"] == r["steps"] else ""
                print(
                    f"  {r['frames']:>4} frames: time ours/official {mine['total_35'] / r['total_35']:.2f}; "
                    f"peak VRAM ours/official {memory}{same}"
                )
    if args.json:
        dump = {
            "card": card,
            "levers": {k: v for k, v in (levers or {}).items() if k in ("sync_check", "resident_gib", "plain_call", "rows", "fp16_vs_fp32", "kept", "attention", "compile_rows")},
            "components": components,
            "runs": [{k: v for k, v in r.items() if k != "latents"} for r in runs],
            "decoding": decoding,
        }
        args.json.write_text(json.dumps(dump, indent=1, default=str))
    print(f"\nbench/gpu.py took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
