"""Issue 16's levers, each switched on alone against the plain fp16 path, on one GPU.

For every lever: one denoiser call (24 frames, both guidance branches), its speed-up over the
plain call, and the **equality row**:
the final latents of a short sampling run with the lever on against the same run without it,
next to the plain fp16 run against fp32 (what fp16 rounding alone moves). Also: whether the
sampling loop synchronises with the host at all (CUDA's sync debug mode), which SDPA kernel
each kind of attention gets and what the others would take, and ``torch.compile`` (compile
time, warm-cache compile time, steady call). Timings are printed, never asserted.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.nn.attention import SDPBackend, sdpa_kernel

from xportrait2_core import kernels
from xportrait2_core.kernels.fast import FUSED_KERNELS
from xportrait2_core.models.attention import Attention
from xportrait2_core.sampling import Conditioning, SamplingSettings, sample_video
from xportrait2_core.weights.loading import XNemoModels

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "memory-efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cuDNN": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def call_seconds(bench, repeats: int) -> float:
    """Median seconds of the bench's denoiser call alone (its own timing; the first call, which
    also encodes the window's motion, is not counted)."""
    bench.denoiser_call()
    return statistics.median(bench.denoiser_call() for _ in range(repeats))


def relative_l2(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.double().cpu(), reference.double().cpu()
    return ((value - reference).norm() / reference.norm()).item()


def max_abs(value: torch.Tensor, reference: torch.Tensor) -> float:
    return (value.double().cpu() - reference.double().cpu()).abs().max().item()


def backend_first(first: SDPBackend) -> ContextManager:
    """SDPA tries ``first`` before the others (falling back where it cannot run a shape)."""
    order = [first] + [b for b in BACKENDS.values() if b != first]
    return sdpa_kernel(order, set_priority=True)


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """SDPA with the head dimension zero-padded to a multiple of 64 (same scale, same result)."""
    head_dim = q.shape[-1] // heads
    padded = -(-head_dim // 64) * 64
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    if padded != head_dim:
        q, k, v = (F.pad(t, (0, padded - head_dim)) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=head_dim**-0.5)[..., :head_dim]
    return rearrange(out, "b h n d -> b n (h d)")


@contextlib.contextmanager
def attention_function(network: torch.nn.Module, function) -> ContextManager:
    modules = [m for m in network.modules() if isinstance(m, Attention)]
    saved = [m.attention for m in modules]
    for module in modules:
        module.attention = function
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.attention = original


@contextlib.contextmanager
def channels_last(network: torch.nn.Module) -> ContextManager:
    network.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        network.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def all_kernels(network: torch.nn.Module) -> ContextManager:
    """The four kernels together, as ``--fast`` switches them on (there for good, here undone)."""
    with contextlib.ExitStack() as stack:
        for lever in FUSED_KERNELS:
            stack.enter_context(lever(network))
        yield


@dataclass
class Lever:
    name: str
    switch: Callable[[], ContextManager] = contextlib.nullcontext


class LeverProblem:
    """One bench (``ours.OursBench``) and its conditioning for a sampling loop of ``step_frames``."""

    def __init__(self, bench, step_frames: int):
        self.bench = bench
        self.device = bench.device
        pipeline = bench.pipeline
        inputs = bench.inputs
        latents, image_embeds, reference = pipeline.encode_reference(bench.source)
        generator = torch.Generator().manual_seed(3)
        faces = inputs["driving_faces"]
        repeats = -(-step_frames // len(faces))
        motion = pipeline.encode_motion(faces.repeat(repeats, 1, 1, 1)[:step_frames])
        negative = pipeline.encode_motion(inputs["source_face"])[0]
        self.conditioning = Conditioning(motion.to(bench.dtype), negative, image_embeds, reference)
        size = bench.config["latent_size"]
        self.step_latents = torch.randn((1, 4, step_frames, size, size), generator=generator).to(self.device, bench.dtype)
        self.reference_latents = latents

    def sampling_loop(self, steps: int = 2) -> torch.Tensor:
        """The sampling loop alone (conditioning precomputed), for the host-sync check."""
        noise = self.step_latents.clone()
        return sample_video(
            self.bench.models.denoiser, self.conditioning, self.reference_latents, noise, [0] * steps,
            SamplingSettings(steps, 2.5, 24, 4),
        )


def sync_check(problem: LeverProblem) -> str:
    """Run the sampling loop with CUDA's sync debug mode on "warn" and say where our code made
    the host wait for the GPU (file:line, times), or that it never did."""
    if problem.device.type != "cuda":
        return "n/a (CPU)"
    problem.sampling_loop()
    synchronize(problem.device)
    places: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        if "called a synchronizing" not in str(message):
            return
        ours = [f for f in traceback.extract_stack() if "xportrait2_core" in f.filename]
        place = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} {ours[-1].line}" if ours else f"{filename}:{lineno}"
        places[place] = places.get(place, 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            problem.sampling_loop()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(problem.device)
    if not places:
        return "none: the loop never waits for the GPU"
    return "SYNC at " + "; ".join(f"{place} ({count}x)" for place, count in places.items())


def cuda_graph_call(bench) -> tuple[float, float, str]:
    """The eager denoiser call captured once as a CUDA graph: replay seconds, plain seconds, and
    the replay output against the plain call's."""
    from xportrait2_core.models.reference_attention import ReferenceRead

    device = bench.device
    image_embeds, reference = bench.reference
    contexts = torch.cat([torch.zeros_like(image_embeds), image_embeds]).unsqueeze(1)
    sample = bench.inputs["call_latents"].to(device, bench.dtype).repeat(2, 1, 1, 1, 1)
    timesteps = torch.full((), bench.first_timestep, dtype=torch.long, device=device)
    read = ReferenceRead(reference, rows=(False, True))
    unet = bench.models.denoiser
    call = lambda: unet(sample, timesteps, contexts, bench.window_motion, read)
    plain_output = call()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            call()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = call()
    graph.replay()
    synchronize(device)
    equal = f"rel L2 {relative_l2(static_output, plain_output):.1e}"
    return median_seconds(graph.replay, device, 5), median_seconds(call, device, 5), equal


def measure_levers(
    bench, levers: list[Lever], repeats: int, equality_run: Callable[[], torch.Tensor]
) -> tuple[float, torch.Tensor, list[dict]]:
    """Plain call seconds, plain latents, and a row per lever (alone): seconds, speed-up, equality.
    ``equality_run()`` is the short sampling run whose final latents are compared."""
    plain_call = call_seconds(bench, repeats)
    plain_latents = equality_run()
    rows = []
    for lever in levers:
        row = {"lever": lever.name}
        try:
            with lever.switch():
                row["seconds"] = call_seconds(bench, repeats)
                row["speedup"] = plain_call / row["seconds"]
                latents = equality_run()
            row["rel_l2"] = relative_l2(latents, plain_latents)
            row["max_abs"] = max_abs(latents, plain_latents)
        except Exception as error:  # noqa: BLE001  (a lever this GPU or torch cannot do is reported, not fatal)
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:140]}"
            traceback.print_exc()
        rows.append(row)
        print(f"  lever {row}", flush=True)
    return plain_call, plain_latents, rows


@dataclass(frozen=True)
class AttentionShape:
    kind: str
    batch: int
    queries: int
    keys: int
    heads: int
    head_dim: int


def attention_shapes(latent_size: int, frames: int = 24) -> list[AttentionShape]:
    """The attention calls of one denoiser call at the first level (and the deeper spatial ones):
    batch = both guidance branches x frames (the conditional half also reads the reference)."""
    images = 2 * frames
    tokens = latent_size * latent_size
    return [
        AttentionShape("spatial self, level 1 (uncond half)", images // 2, tokens, tokens, 8, 40),
        AttentionShape("spatial + reference, level 1 (cond half)", images // 2, tokens, 2 * tokens, 8, 40),
        AttentionShape("spatial + reference, level 2", images // 2, tokens // 4, tokens // 2, 8, 80),
        AttentionShape("spatial + reference, level 3", images // 2, tokens // 16, tokens // 8, 8, 160),
        AttentionShape("temporal, level 1", 2 * tokens, frames, frames, 8, 40),
        AttentionShape("motion cross, level 1", images, tokens, 32, 8, 40),
    ]


def kernel_of(function: Callable[[], object]) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        function()
        torch.cuda.synchronize()
    kernels = sorted(
        (e for e in profiler.key_averages() if e.self_device_time_total > 0), key=lambda e: -e.self_device_time_total
    )
    return kernels[0].key[:60] if kernels else "?"


def attention_table(latent_size: int, device: torch.device, dtype: torch.dtype, repeats: int) -> list[dict]:
    """Milliseconds of each attention kind under each SDPA backend, and padded to head dim 64."""
    rows = []
    generator = torch.Generator(device).manual_seed(5)
    for shape in attention_shapes(latent_size):
        make = lambda n, d: torch.randn((shape.batch, shape.heads, n, d), generator=generator, device=device, dtype=dtype)
        q, k, v = make(shape.queries, shape.head_dim), make(shape.keys, shape.head_dim), make(shape.keys, shape.head_dim)
        row = {"kind": shape.kind, "shape": f"{shape.batch}x{shape.heads}h, {shape.queries}q x {shape.keys}k, d {shape.head_dim}"}
        default = lambda: F.scaled_dot_product_attention(q, k, v)
        reference = default()
        row["default ms"] = median_seconds(default, device, repeats) * 1e3
        row["default kernel"] = kernel_of(default) if device.type == "cuda" else "cpu"
        for name, backend in BACKENDS.items():
            if name == "math" and shape.queries * shape.keys * shape.batch * shape.heads > 2**31:
                row[f"{name} ms"] = "too big"
                continue
            try:
                with sdpa_kernel([backend]):
                    forced = lambda: F.scaled_dot_product_attention(q, k, v)
                    error = relative_l2(forced(), reference)
                    row[f"{name} ms"] = median_seconds(forced, device, repeats) * 1e3
                    row[f"{name} err"] = error
            except RuntimeError as error:
                row[f"{name} ms"] = f"n/a ({str(error).splitlines()[0][:40]})"
        if shape.head_dim % 64:
            pad = 64 - shape.head_dim % 64
            qp, kp, vp = (F.pad(t, (0, pad)) for t in (q, k, v))
            padded = lambda: F.scaled_dot_product_attention(qp, kp, vp, scale=shape.head_dim**-0.5)[..., : shape.head_dim]
            row["padded-64 ms"] = median_seconds(padded, device, repeats) * 1e3
            row["padded-64 err"] = relative_l2(padded(), reference)
        rows.append(row)
        print(f"  attention {row}", flush=True)
    return rows


def compile_rows(
    bench, equality_run, plain_call: float, plain_latents: torch.Tensor, modes: list[str], repeats: int,
    while_compiled: Optional[Callable[[str], object]] = None,
) -> list[dict]:
    """``torch.compile`` of the denoiser: cold compile (first call), compile again after a dynamo
    reset (Inductor's caches warm), steady call, equality; ``while_compiled(mode)`` runs before
    the denoiser goes back to eager (its result is the row's ``runs``)."""
    unet = bench.models.denoiser
    device = bench.device
    bench.denoiser_call()  # the window's motion is encoded once, outside the compile timings
    rows = []
    for mode in modes:
        row = {"lever": f"torch.compile ({mode})"}
        try:
            for key in ("compile_s", "warm_cache_compile_s"):
                torch._dynamo.reset()
                unet.compile(mode=None if mode == "default" else mode, dynamic=False)
                synchronize(device)
                started = time.perf_counter()
                bench.denoiser_call()
                synchronize(device)
                row[key] = time.perf_counter() - started
                print(f"  {mode}: {key} {row[key]:.1f}", flush=True)
            row["seconds"] = call_seconds(bench, repeats)
            row["speedup"] = plain_call / row["seconds"]
            latents = equality_run()
            row["rel_l2"] = relative_l2(latents, plain_latents)
            row["max_abs"] = max_abs(latents, plain_latents)
            print(f"  {row}", flush=True)
            if while_compiled is not None:
                row["runs"] = while_compiled(mode)
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:140]}"
            traceback.print_exc()
        finally:
            torch._dynamo.reset()
            unet._compiled_call_impl = None  # back to eager for what follows
        rows.append(row)
    return rows


def lever_benches(models: XNemoModels, work, config_for: Callable, args):
    """The 24-frame call bench, and the short sampling run of the equality rows."""
    import fixture
    from dataclasses import asdict
    from ours import OursBench

    def bench_for(frames: int, steps: int, networks: XNemoModels = models):
        config = config_for(frames, steps)
        return OursBench(networks, fixture.make_inputs(config), asdict(config), work)

    call_bench = bench_for(24, 2)
    equality_bench = bench_for(args.equality_frames, args.equality_steps)

    def equality_run() -> torch.Tensor:
        equality_bench.sampling_run()
        return equality_bench.last_latents.float().cpu()

    call_bench.sampling_run()  # warm-up
    return call_bench, equality_run, bench_for


def compile_section(models: XNemoModels, work, config_for: Callable, args, while_compiled) -> dict:
    call_bench, equality_run, _ = lever_benches(models, work, config_for, args)
    sync = sync_check(LeverProblem(call_bench, step_frames=args.step_frames))
    print(f"  host syncs in the sampling loop: {sync}", flush=True)
    plain_call = call_seconds(call_bench, args.repeats)
    plain_latents = equality_run()
    rows = compile_rows(call_bench, equality_run, plain_call, plain_latents, args.compile_modes.split(","), args.repeats, while_compiled)
    return {"plain_call": plain_call, "compile_rows": rows, "sync_check": sync}


def fp32_copy(models: XNemoModels) -> XNemoModels:
    """The same networks upcast to float32 (exact copies of the fp16 weights)."""
    return XNemoModels(
        copy.deepcopy(models.motion_encoder).float(),
        copy.deepcopy(models.reference_unet).float(),
        copy.deepcopy(models.denoiser).float(),
        models.unet_config,
        models.schedule,
        [],
    )


def resident_gib(models: XNemoModels, conditioning: Conditioning) -> dict[str, float]:
    """What stays in device memory during sampling: each network's weights and the reference
    keys/values (with their dtype)."""
    weights = lambda network: sum(p.numel() * p.element_size() for p in network.parameters()) / 2**30
    device = models.denoiser.conv_in.weight.device
    # With offload (the default on CUDA) the networks done before sampling wait in host memory.
    where = lambda name, network: name if next(network.parameters()).device == device else f"{name} (in host memory)"
    keys_values = [t for pair in conditioning.reference.by_block.values() for t in pair]
    return {
        "denoiser": weights(models.denoiser),
        where("reference UNet", models.reference_unet): weights(models.reference_unet),
        where("motion encoder", models.motion_encoder): weights(models.motion_encoder),
        f"reference keys/values ({keys_values[0].dtype})": sum(t.numel() * t.element_size() for t in keys_values) / 2**30,
    }


def combined(levers: list[Lever]) -> Callable[[], ContextManager]:
    """One switch for several levers."""

    @contextlib.contextmanager
    def switch():
        with contextlib.ExitStack() as stack:
            for lever in levers:
                stack.enter_context(lever.switch())
            yield

    return switch


def run_levers(models: XNemoModels, work, config_for: Callable, args) -> dict:
    """Everything above on ``models``: returns the rows and the levers worth keeping (faster by
    3 % or more, and final latents within what fp16 rounding moves)."""
    call_bench, equality_run, bench_for = lever_benches(models, work, config_for, args)
    device = call_bench.device
    problem = LeverProblem(call_bench, step_frames=args.step_frames)
    result = {"sync_check": sync_check(problem), "resident_gib": resident_gib(models, problem.conditioning)}
    print(f"  resident during sampling: {result['resident_gib']}", flush=True)
    print(f"  host syncs in the sampling loop: {result['sync_check']}", flush=True)
    del problem
    levers = [
        Lever("SDPA: cuDNN first", lambda: backend_first(SDPBackend.CUDNN_ATTENTION)),
        Lever("SDPA: flash first", lambda: backend_first(SDPBackend.FLASH_ATTENTION)),
        Lever("SDPA: memory-efficient first", lambda: backend_first(SDPBackend.EFFICIENT_ATTENTION)),
        Lever("head dim padded to 64", lambda: attention_function(models.denoiser, padded_attention)),
        Lever("channels_last convolutions", lambda: channels_last(models.denoiser)),
        # Issue 26's Triton kernels (xportrait2_core.kernels); eager where Triton cannot run.
        Lever("Triton GEGLU erf epilogue", lambda: kernels.fused_geglu(models.denoiser)),
        Lever("Triton residual + LayerNorm", lambda: kernels.fused_residual_layer_norm(models.denoiser)),
        Lever("Triton temporal layout + LayerNorm", lambda: kernels.fused_layout_layer_norm(models.denoiser)),
        Lever("Triton GroupNorm + SiLU", lambda: kernels.fused_group_norm_silu(models.denoiser)),
        Lever("Triton: all four (--fast)", lambda: all_kernels(models.denoiser)),
    ]
    plain_call, plain_latents, rows = measure_levers(call_bench, levers, args.repeats, equality_run)
    result.update(plain_call=plain_call, rows=rows)
    if device.type == "cuda":
        try:
            replay, eager, equal = cuda_graph_call(call_bench)
            rows.append({"lever": "CUDA graph of the eager call", "seconds": replay, "speedup": eager / replay, "equality": equal})
        except Exception as error:  # noqa: BLE001
            rows.append({"lever": "CUDA graph of the eager call", "error": f"{type(error).__name__}: {str(error)[:140]}"})
            traceback.print_exc()
        print(f"  lever {rows[-1]}", flush=True)
    # fp16 against fp32: what rounding alone moves (TF32 off, so fp32 is fp32)
    allow = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        full = fp32_copy(models)
        bench32 = bench_for(args.equality_frames, args.equality_steps, full)
        bench32.sampling_run()
        latents32 = bench32.last_latents.float().cpu()
        result["fp16_vs_fp32"] = {"rel_l2": relative_l2(plain_latents, latents32), "max_abs": max_abs(plain_latents, latents32)}
        del full, bench32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = allow
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"  fp16 vs fp32: {result['fp16_vs_fp32']}", flush=True)
    rounding = result["fp16_vs_fp32"]["rel_l2"]
    kept = [
        lever for lever, row in zip(levers, rows)
        if row.get("speedup", 0) >= 1.03 and row.get("rel_l2", 1.0) <= rounding
    ]
    result["kept"] = [lever.name for lever in kept]
    result["kept_switch"] = combined(kept)
    try:
        result["attention"] = attention_table(call_bench.config["latent_size"], device, call_bench.dtype, args.repeats)
    except Exception:  # noqa: BLE001  (reported; the rest of the run goes on)
        traceback.print_exc()
        result["attention"] = []
    result["call_bench"], result["equality_run"], result["plain_latents"] = call_bench, equality_run, plain_latents
    return result


def print_levers(result: dict, call_flops: float, peak_flops: float, fixed_seconds: float, frames: int = 120, steps: int = 35) -> None:
    """The per-lever table: call time, speed-up, MFU, estimated fps at ``frames``
    frames and ``steps`` steps, and the equality columns."""
    windows = -(-frames // 20)
    rounding = result["fp16_vs_fp32"]
    print(f"\nlevers, each alone (host syncs in the sampling loop: {result['sync_check']})")
    print("resident during sampling, GiB: " + ", ".join(f"{k} {v:.2f}" for k, v in result["resident_gib"].items()))
    print(f"fp16 rounding (plain fp16 vs fp32 final latents): rel L2 {rounding['rel_l2']:.2e}, max |diff| {rounding['max_abs']:.2e}")
    print(f"{'lever':<34} {'ms/call':>8} {'speed-up':>8} {'MFU':>5} {'fps@120 est.':>12} {'rel L2 vs plain':>16} {'max |diff|':>10}  kept")
    plain = result["plain_call"]
    rows = [{"lever": "plain fp16 (eager)", "seconds": plain, "speedup": 1.0, "rel_l2": 0.0, "max_abs": 0.0}]
    for row in rows + result["rows"] + result.get("compile_rows", []):
        if "error" in row:
            print(f"{row['lever']:<34} failed: {row['error']}")
            continue
        seconds = row["seconds"]
        fps = frames / (fixed_seconds + windows * steps * seconds)
        equality = f"{row['rel_l2']:>16.2e} {row['max_abs']:>10.2e}" if "rel_l2" in row else f"{row.get('equality', ''):>27}"
        extra = f" (compile {row['compile_s']:.0f} s, warm cache {row['warm_cache_compile_s']:.0f} s)" if "compile_s" in row else ""
        kept = "yes" if row["lever"] in result["kept"] else ""
        print(
            f"{row['lever'][:34]:<34} {seconds * 1e3:>8.1f} {row['speedup']:>8.2f} {call_flops / seconds / peak_flops:>5.0%} "
            f"{fps:>12.2f} {equality}  {kept}{extra}"
        )
    print("(fps estimated from the call time, the reference pass and the motion encoding)")
    print("\nattention kinds under each SDPA backend (ms; err = rel L2 vs the default)")
    for row in result["attention"]:
        cells = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k not in ("kind", "shape"))
        print(f"  {row['kind']} [{row['shape']}]: {cells}")
