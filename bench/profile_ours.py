"""Where our sampling run spends its time: by network module kind and by PyTorch operator.

Module kinds are timed with forward pre/post hooks (wall time of the outermost call of each
kind; kinds never nest inside each other, so the rows add up), operators with
``torch.profiler`` (self CPU time). Both run over one call of ``XPortrait2Pipeline.sample``,
so every kind of work is present: the reference pass, motion encoding of every frame and the
denoiser calls of the windows.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

from torch.profiler import ProfilerActivity, profile

from xportrait2_core.models.motion_module import MotionModule
from xportrait2_core.models.temporal_module import TemporalModule
from xportrait2_core.models.unet_blocks import Downsample, ResnetBlock, SpatialTransformer, Upsample

# The kinds of the denoiser's modules; they never nest inside each other, so the rows add up.
DENOISER_KINDS = (
    (ResnetBlock, "denoiser: resnets"),
    (
        SpatialTransformer,
        "denoiser: spatial transformers (self+reference attn, CLIP attn, FF)",
    ),
    (MotionModule, "denoiser: motion modules (cross-attn to motion tokens)"),
    (TemporalModule, "denoiser: temporal modules (attn over frames)"),
    ((Downsample, Upsample), "denoiser: down/up-samplers"),
)
DENOISER_WHOLE = "denoiser (whole)"
MOTION_WHOLE = "motion encoder (all frames, once)"
REFERENCE_WHOLE = "reference UNet (once)"


class ModuleTimer:
    """Accumulates the wall time of the outermost active module of each kind (``synchronize``:
    called at both ends, e.g. ``torch.cuda.synchronize`` so that GPU work is attributed)."""

    def __init__(self, synchronize=None):
        self.synchronize = synchronize or (lambda: None)
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth: dict[str, int] = defaultdict(int)
        self._started: dict[str, float] = {}
        self._handles = []

    def attach(self, models) -> None:
        """Time the motion encoder and the reference UNet whole, the denoiser by module kind."""
        self._hook(models.motion_encoder, MOTION_WHOLE)
        self._hook(models.reference_unet, REFERENCE_WHOLE)
        self._hook(models.denoiser, DENOISER_WHOLE)
        for module in models.denoiser.modules():
            kind = next(
                (name for cls, name in DENOISER_KINDS if isinstance(module, cls)), None
            )
            if kind is not None:
                self._hook(module, kind)

    def _hook(self, module, kind: str) -> None:
        self._handles.append(module.register_forward_pre_hook(self._enter(kind)))
        self._handles.append(module.register_forward_hook(self._leave(kind)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _enter(self, kind):
        def hook(module, args):
            if self._depth[kind] == 0:
                self.synchronize()
                self._started[kind] = time.perf_counter()
            self._depth[kind] += 1

        return hook

    def _leave(self, kind):
        def hook(module, args, output):
            self._depth[kind] -= 1
            if self._depth[kind] == 0:
                self.synchronize()
                self.seconds[kind] += time.perf_counter() - self._started[kind]
                self.calls[kind] += 1

        return hook


@contextmanager
def timed_modules(models, synchronize=None):
    timer = ModuleTimer(synchronize)
    timer.attach(models)
    try:
        yield timer
    finally:
        timer.detach()


def profile_sampling(bench, steps: int):
    """Run our whole ``sample`` with ``steps`` steps under both profilers; returns
    (total seconds, module rows, operator rows)."""
    config = dict(bench.config)
    bench.config = dict(config, steps=steps)
    offsets = bench.inputs["offsets"]
    bench.inputs["offsets"] = offsets[:steps]
    models = bench.models
    try:
        with (
            timed_modules(models) as timer,
            profile(activities=[ProfilerActivity.CPU]) as profiler,
        ):
            started = time.perf_counter()
            bench.sampling_run()
            total = time.perf_counter() - started
    finally:
        bench.config = config
        bench.inputs["offsets"] = offsets
    return total, module_rows(timer, total), operator_rows(profiler)


def module_rows(timer: ModuleTimer, total: float) -> list[tuple[str, int, float]]:
    """(kind, calls, seconds) with the remainders made explicit, largest first."""
    parts = {k: v for k, v in timer.seconds.items() if k != DENOISER_WHOLE}
    denoiser_parts = sum(v for k, v in parts.items() if k.startswith("denoiser:"))
    rows = [(kind, timer.calls[kind], seconds) for kind, seconds in parts.items()]
    whole = timer.seconds.get(DENOISER_WHOLE, 0.0)
    rows.append(
        (
            "denoiser: rest (conv_in/out, time embedding, skips, layout)",
            timer.calls[DENOISER_WHOLE],
            whole - denoiser_parts,
        )
    )
    networks = whole + parts.get(MOTION_WHOLE, 0.0) + parts.get(REFERENCE_WHOLE, 0.0)
    rows.append(
        (
            "outside the networks (windows, averaging, DDIM, blur, k/v projection)",
            0,
            total - networks,
        )
    )
    return sorted(rows, key=lambda row: -row[2])


def operator_rows(profiler, limit: int = 12) -> list[tuple[str, int, float]]:
    """(operator, calls, self CPU seconds), the ``limit`` largest."""
    events = sorted(profiler.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.count, e.self_cpu_time_total / 1e6) for e in events[:limit]]
