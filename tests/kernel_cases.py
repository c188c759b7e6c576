"""The kernel checks of ``tests/test_kernels.py``, run in a subprocess under Triton's interpreter.

``python tests/kernel_cases.py`` (with ``TRITON_INTERPRET=1``, set by the test before this
process starts, so that no other test module ever sees an interpreted triton) runs every case
and prints one JSON line: ``{case: null | "failure message"}``. Shapes are small because the
interpreter runs one program at a time; widths are not powers of two, so every row has a masked
tail.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from einops import rearrange

from xportrait2_core import kernels
from xportrait2_core.models.config import UNetConfig
from xportrait2_core.models.motion_module import MotionModule
from xportrait2_core.models.operations import LayerFactory
from xportrait2_core.models.temporal_module import TemporalModule
from xportrait2_core.models.unet_blocks import FrameBatch, ResnetBlock

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """fp32: float32 rounding; fp16: a couple of fp16 ulps (the kernels round once where the
    eager code rounds after every operation)."""
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 4e-3, "atol": 2e-3}
    torch.testing.assert_close(actual.float(), expected.float(), **tolerance, msg=lambda m: f"{what}: {m}")


def seeded_normal(*shape, dtype, seed: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset).to(dtype)


def geglu(dtype: torch.dtype) -> None:
    from xportrait2_core.kernels.geglu import gelu_gate_product_

    projected = seeded_normal(2, 3, 2 * 300, dtype=dtype, seed=1, scale=2.0)
    half = projected[..., :300] * F.gelu(projected[..., 300:])
    fused = gelu_gate_product_(projected.clone())
    if fused.shape != half.shape:
        raise AssertionError(f"shape {tuple(fused.shape)}, expected {tuple(half.shape)}")
    close(fused, half, dtype, "value * gelu_erf(gate)")


def residual_layer_norm(dtype: torch.dtype) -> None:
    from xportrait2_core.kernels.residual_layer_norm import residual_layer_norm_

    width = 300
    weight, bias = seeded_normal(width, dtype=dtype, seed=2, offset=1.0), seeded_normal(width, dtype=dtype, seed=3)
    x = seeded_normal(6, 5, width, dtype=dtype, seed=4, offset=0.5)
    # as the temporal attention returns it: (b, f, d, c) view of (b, d, f, c) memory
    residual = seeded_normal(2, 5, 3, width, dtype=dtype, seed=5).transpose(1, 2)
    expected_sum = x.view(residual.shape) + residual
    expected = F.layer_norm(expected_sum, (width,), weight, bias, 1e-5).view(x.shape)
    fused_x = x.clone()
    normed = residual_layer_norm_(fused_x, residual, weight, bias, 1e-5)
    close(fused_x.view(residual.shape), expected_sum, dtype, "x + residual, stored in x")
    close(normed, expected, dtype, "layer_norm(x + residual)")
    # a plain (N, tokens, C) residual too
    plain = seeded_normal(6, 5, width, dtype=dtype, seed=6)
    fused_x = x.clone()
    normed = residual_layer_norm_(fused_x, plain, weight, bias, 1e-5)
    close(normed, F.layer_norm(x + plain, (width,), weight, bias, 1e-5), dtype, "layer_norm(x + plain residual)")


def layout_layer_norm(dtype: torch.dtype) -> None:
    from xportrait2_core.kernels.layout_layer_norm import frames_to_pixels_layer_norm

    batch, frames, tokens, width = 2, 3, 5, 200
    weight, bias = seeded_normal(width, dtype=dtype, seed=7, offset=1.0), seeded_normal(width, dtype=dtype, seed=8)
    positions = seeded_normal(frames, width, dtype=dtype, seed=9)
    x = seeded_normal(batch * frames, tokens, width, dtype=dtype, seed=10, offset=-0.3)
    residual = seeded_normal(batch, tokens, frames, width, dtype=dtype, seed=11).transpose(1, 2)

    def eager(tokens_: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(tokens_, (width,), weight, bias, 1e-5)
        per_pixel = rearrange(normed, "(b f) d c -> b d f c", f=frames) + positions
        return per_pixel.flatten(0, 1)

    close(frames_to_pixels_layer_norm(x.clone(), frames, weight, bias, 1e-5, positions), eager(x), dtype, "(b d) f c norm")
    summed = x.clone()
    sequences = frames_to_pixels_layer_norm(summed, frames, weight, bias, 1e-5, positions, residual)
    expected_sum = x.view(residual.shape) + residual
    close(summed.view(residual.shape), expected_sum, dtype, "x + transposed residual")
    close(sequences, eager(expected_sum.view(x.shape)), dtype, "(b d) f c norm of x + residual")


def group_norm_silu(dtype: torch.dtype) -> None:
    from xportrait2_core.kernels.group_norm_silu import group_norm_silu as fused

    # (3 channels x 35 pixels per group: one masked block) and (32 x 144: several blocks, a
    # masked tail, a mean far from zero)
    for shape, groups, offset in (((2, 96, 5, 7), 32, 0.0), ((1, 64, 12, 12), 2, 4.0)):
        channels = shape[1]
        weight, bias = seeded_normal(channels, dtype=dtype, seed=12, offset=1.0), seeded_normal(channels, dtype=dtype, seed=13)
        x = seeded_normal(*shape, dtype=dtype, seed=14, offset=offset)
        expected = F.silu(F.group_norm(x, groups, weight, bias, 1e-5))
        for memory_format in (torch.contiguous_format, torch.channels_last):
            laid_out = x.contiguous(memory_format=memory_format)
            out = fused(laid_out, groups, weight, bias, 1e-5)
            if out.stride() != laid_out.stride():
                raise AssertionError(f"output strides {out.stride()} for input strides {laid_out.stride()}")
            close(out, expected, dtype, f"silu(group_norm) {tuple(shape)} {memory_format}")


# lever -> (kernel module, the function the swapped forwards call)
KERNEL_OF_LEVER = {
    "fused_geglu": ("geglu", "gelu_gate_product_"),
    "fused_residual_layer_norm": ("residual_layer_norm", "residual_layer_norm_"),
    "fused_layout_layer_norm": ("layout_layer_norm", "frames_to_pixels_layer_norm"),
    "fused_group_norm_silu": ("group_norm_silu", "group_norm_silu"),
}


def counted_kernel_calls(stack: contextlib.ExitStack) -> dict[str, int]:
    """Counts the calls of each kernel entry point until ``stack`` closes, so that a module
    check cannot pass on the eager fallback alone."""
    counts = {}
    for module_name, function_name in KERNEL_OF_LEVER.values():
        module = importlib.import_module(f"xportrait2_core.kernels.{module_name}")
        original = getattr(module, function_name)
        counts[function_name] = 0

        def counting(*args, _original=original, _name=function_name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        setattr(module, function_name, counting)
        stack.callback(setattr, module, function_name, original)
    return counts


def module_cases(dtype: torch.dtype, levers: tuple[str, ...], module: str, expect_kernels: bool = True) -> None:
    """A small module with ``levers`` switched on against the same module eager: within fp32 or
    fp16 rounding where the kernels run (``expect_kernels``), the same bits where they cannot."""
    layers = LayerFactory(dtype=dtype, device="cpu")
    torch.manual_seed(20)
    frames = 3
    if module == "temporal":
        network = TemporalModule(64, 2, 8, layers)
        x = seeded_normal(2 * frames, 64, 4, 5, dtype=dtype, seed=21)
        run = lambda: network(x.clone(), frames)
    elif module == "motion":
        network = MotionModule(64, 2, 16, layers)
        x = seeded_normal(2 * frames, 64, 4, 5, dtype=dtype, seed=22)
        tokens = seeded_normal(2 * frames, 32, 16, dtype=dtype, seed=23)
        run = lambda: network(x.clone(), tokens)
    else:
        config = UNetConfig(block_out_channels=(32, 64, 64, 64))
        network = ResnetBlock(32, 64, config, layers)
        x = seeded_normal(2, 32, 6, 5, dtype=dtype, seed=24)
        batch = FrameBatch(1, seeded_normal(2, config.time_embed_dim, dtype=dtype, seed=25), None)
        run = lambda: network(x, batch)
    with torch.no_grad():
        for parameter in network.parameters():  # norms' affine parameters away from 1 and 0
            parameter.add_(seeded_normal(*parameter.shape, dtype=dtype, seed=26, scale=0.1))
        eager = run()
        with contextlib.ExitStack() as stack:
            launches = counted_kernel_calls(stack)
            for lever in levers:
                stack.enter_context(getattr(kernels, lever)(network))
            fused = run()
        ran = [lever for lever in levers if launches[KERNEL_OF_LEVER[lever][1]]]
        if expect_kernels and ran != list(levers):
            raise AssertionError(f"{module} module: no kernel ran for {sorted(set(levers) - set(ran))} (the eager fallback did)")
        if not expect_kernels and ran:
            raise AssertionError(f"{module} module: kernels ran for {ran} where the eager fallback should have")
        swapped = [type(m).__name__ for m in network.modules() if "forward" in m.__dict__]
        if swapped:
            raise AssertionError(f"forward still swapped after the levers closed: {swapped}")
        again = run()
    torch.testing.assert_close(again, eager, rtol=0, atol=0, msg=lambda m: f"eager after the levers: {m}")
    scale = eager.float().norm()
    relative = ((fused.float() - eager.float()).norm() / scale).item()
    bound = (1e-5 if dtype == torch.float32 else 2.3e-3) if expect_kernels else 0.0
    if not relative <= bound:
        raise AssertionError(f"{module} module with {levers}: relative L2 {relative:.2e} > {bound:.1e}")


STACK_LEVERS = ("fused_geglu", "fused_residual_layer_norm", "fused_layout_layer_norm")
CASES = {}
for name, dtype in DTYPES.items():
    CASES[f"geglu-{name}"] = (geglu, dtype)
    CASES[f"residual_layer_norm-{name}"] = (residual_layer_norm, dtype)
    CASES[f"layout_layer_norm-{name}"] = (layout_layer_norm, dtype)
    CASES[f"group_norm_silu-{name}"] = (group_norm_silu, dtype)
    CASES[f"temporal_module_all_levers-{name}"] = (module_cases, dtype, STACK_LEVERS, "temporal")
    CASES[f"resnet_block_group_norm_silu-{name}"] = (module_cases, dtype, ("fused_group_norm_silu",), "resnet")
CASES["temporal_module_residual_only-fp32"] = (module_cases, torch.float32, ("fused_residual_layer_norm",), "temporal")
CASES["temporal_module_layout_only-fp32"] = (module_cases, torch.float32, ("fused_layout_layer_norm",), "temporal")
CASES["motion_module_residual_geglu-fp32"] = (module_cases, torch.float32, ("fused_residual_layer_norm", "fused_geglu"), "motion")


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 (tests/test_kernels.py does)")
    torch.set_num_threads(1)
    results = {}
    for case, (function, *arguments) in CASES.items():
        try:
            function(*arguments)
            results[case] = None
        except Exception:  # noqa: BLE001  (each case reports its own failure)
            results[case] = traceback.format_exc(limit=-3)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
