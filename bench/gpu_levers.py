"""Issue 16's levers, each switched on alone against the plain fp16 path, on one GPU.

For every lever: one denoiser call (24 frames, both guidance branches; for window batching the
time per window of a whole step), its speed-up over the plain call, and the **equality row**:
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
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.nn.attention import SDPBackend, sdpa_kernel

from xportrait2_core.context_windows import context_windows
from xportrait2_core.models.attention import Attention
from xportrait2_core.sampling import Conditioning, SamplingSettings, local_window_predictor, predict_windows, sample_video
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


@dataclass
class Lever:
    name: str
    switch: Callable[[], ContextManager] = contextlib.nullcontext
    window_batch: int = 1


class LeverProblem:
    """One bench (``ours.OursBench``) and its conditioning for whole steps of windows."""

    def __init__(self, bench, step_frames: int):
        self.bench = bench
        self.device = bench.device
        pipeline = bench.pipeline
        inputs = bench.inputs
        bench.reference_pass()
        latents, image_embeds, reference = pipeline.encode_reference(bench.source)
        generator = torch.Generator().manual_seed(3)
        faces = inputs["driving_faces"]
        repeats = -(-step_frames // len(faces))
        motion = pipeline.encode_motion(faces.repeat(repeats, 1, 1, 1)[:step_frames])
        negative = pipeline.encode_motion(inputs["source_face"])[0]
        self.conditioning = Conditioning(motion.to(bench.dtype), negative, image_embeds, reference)
        size = bench.config["latent_size"]
        self.step_latents = torch.randn((1, 4, step_frames, size, size), generator=generator).to(self.device, bench.dtype)
        self.windows = context_windows(step_frames, 24, 4, 0)
        self.reference_latents = latents

    def window_step(self, window_batch: int) -> None:
        """All windows of one step (both branches), ``window_batch`` windows per call."""
        unet = self.bench.models.denoiser
        for _ in predict_windows(unet, self.conditioning, True, self.step_latents, self.bench.first_timestep, self.windows, window_batch):
            pass

    def sampling_loop(self, steps: int = 2) -> torch.Tensor:
        """The sampling loop alone (conditioning precomputed), for the host-sync check."""
        frames = self.step_latents.shape[2]
        noise = self.step_latents.clone()
        return sample_video(
            self.bench.models.denoiser, self.conditioning, self.reference_latents, noise, [0] * steps,
            SamplingSettings(steps, 2.5, 24, 4),
        )


def sync_check(problem: LeverProblem) -> str:
    """Run the sampling loop with CUDA's sync debug mode set to error."""
    if problem.device.type != "cuda":
        return "n/a (CPU)"
    problem.sampling_loop()
    synchronize(problem.device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        problem.sampling_loop()
        verdict = "none: the loop never waits for the GPU"
    except RuntimeError as error:
        verdict = f"SYNC: {str(error).splitlines()[0][:160]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    synchronize(problem.device)
    return verdict


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
    bench, levers: list[Lever], repeats: int, window_times: dict[int, dict],
    equality_run: Callable[[Optional[Callable]], torch.Tensor],
) -> tuple[float, torch.Tensor, list[dict]]:
    """Plain call seconds, plain latents, and a row per lever (alone): seconds, speed-up, equality.
    ``equality_run(window_predictor)`` is the short sampling run whose final latents are compared;
    window-batch levers take their per-window time from ``window_times`` (:func:`window_batch_rows`)."""
    device = bench.device
    plain_call = median_seconds(bench.denoiser_call, device, repeats)
    plain_latents = equality_run(None)
    rows = []
    for lever in levers:
        row = {"lever": lever.name}
        try:
            with lever.switch():
                if lever.window_batch > 1:
                    row["seconds"] = window_times[lever.window_batch]["per_window"]
                    row["speedup"] = window_times[1]["per_window"] / row["seconds"]
                    row["peak_gib"] = window_times[lever.window_batch]["peak_gib"]
                    latents = equality_run(local_window_predictor(bench.models.denoiser, lever.window_batch))
                else:
                    bench.denoiser_call()
                    row["seconds"] = median_seconds(bench.denoiser_call, device, repeats)
                    row["speedup"] = plain_call / row["seconds"]
                    latents = equality_run(None)
            row["rel_l2"] = relative_l2(latents, plain_latents)
            row["max_abs"] = max_abs(latents, plain_latents)
        except Exception as error:  # noqa: BLE001  (a lever this GPU or torch cannot do is reported, not fatal)
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:140]}"
            traceback.print_exc()
        rows.append(row)
        print(f"  lever {row}", flush=True)
    return plain_call, plain_latents, rows


def window_batch_rows(problem: LeverProblem, batches: list[int], repeats: int) -> dict[int, dict]:
    """Per-window time and peak memory of a whole step at each window batch."""
    device = problem.device
    results = {}
    for batch in batches:
        problem.window_step(batch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = median_seconds(lambda: problem.window_step(batch), device, repeats)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        results[batch] = {"per_window": seconds / len(problem.windows), "peak_gib": peak / 2**30}
        print(f"  window batch {batch}: {results[batch]}", flush=True)
    return results


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


def compile_rows(bench, equality_run, plain_call: float, plain_latents: torch.Tensor, modes: list[str], repeats: int) -> list[dict]:
    """``torch.compile`` of the denoiser: cold compile (first call), compile again after a dynamo
    reset (Inductor's caches warm), steady call, equality."""
    unet = bench.models.denoiser
    device = bench.device
    rows = []
    for mode in modes:
        row = {"lever": f"torch.compile ({mode})"}
        try:
            torch._dynamo.reset()
            unet.compile(mode=None if mode == "default" else mode, dynamic=False)
            synchronize(device)
            started = time.perf_counter()
            bench.denoiser_call()
            synchronize(device)
            row["compile_s"] = time.perf_counter() - started
            torch._dynamo.reset()
            unet.compile(mode=None if mode == "default" else mode, dynamic=False)
            started = time.perf_counter()
            bench.denoiser_call()
            synchronize(device)
            row["warm_cache_compile_s"] = time.perf_counter() - started
            for _ in range(2):
                bench.denoiser_call()
            row["seconds"] = median_seconds(bench.denoiser_call, device, repeats)
            row["speedup"] = plain_call / row["seconds"]
            latents = equality_run(None)
            row["rel_l2"] = relative_l2(latents, plain_latents)
            row["max_abs"] = max_abs(latents, plain_latents)
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:140]}"
            traceback.print_exc()
        finally:
            torch._dynamo.reset()
            unet._compiled_call_impl = None  # back to eager for what follows
        rows.append(row)
        print(f"  {row}", flush=True)
    return rows


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
