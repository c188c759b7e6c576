"""Issue 26's fused Triton kernels, proven on the CPU through Triton's interpreter.

The interpreter is chosen by ``TRITON_INTERPRET=1`` before triton is first imported, and
other test modules (torch.compile's) import triton for real: so the kernel checks run in one
subprocess (``tests/kernel_cases.py``) whose results each test below reads. In this process,
with the interpreter off, every lever must fall back to the eager code on CPU tensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.kernel_cases import CASES, DTYPES, module_cases
from xportrait2_core import kernels
from xportrait2_core.models.operations import LayerFactory, skip_init_operations

CASES_SCRIPT = Path(__file__).with_name("kernel_cases.py")


@pytest.fixture(scope="module")
def interpreted_results() -> dict:
    environment = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(CASES_SCRIPT)], env=environment, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"kernel_cases.py exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_under_interpreter(interpreted_results, case):
    assert case in interpreted_results, f"{case} did not run"
    failure = interpreted_results[case]
    assert failure is None, failure


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="this process has the interpreter on")
@pytest.mark.parametrize("module", ["temporal", "motion", "resnet"])
def test_levers_fall_back_to_eager_without_a_runnable_device(module):
    """CPU tensors without the interpreter: every lever on, the eager code runs (same bits) and
    no kernel is called."""
    everything = tuple(name for name in kernels.__all__ if name.startswith("fused_"))
    for tensor in (torch.zeros(1), torch.zeros(1, dtype=torch.float16)):
        assert not kernels.triton_can_run(tensor)
    module_cases(DTYPES["fp32"], everything, module, expect_kernels=False)


def test_each_lever_swaps_modules_of_the_denoiser_and_restores_them():
    """The bench's lever rows switch these on ``models.denoiser``: each must reach modules there
    (a lever that swaps nothing would measure the plain path) and leave none swapped."""
    from xportrait2_core.models.attention_stack import AttentionStack
    from xportrait2_core.models.config import UNetConfig
    from xportrait2_core.models.unet3d import DenoisingUNet3D

    config = UNetConfig(block_out_channels=(32, 32, 32, 32), attention_heads=2, motion_heads=2, temporal_heads=2)
    denoiser = DenoisingUNet3D(config, LayerFactory(operations=skip_init_operations, device="meta"))
    stacks = [m for m in denoiser.modules() if isinstance(m, AttentionStack)]
    assert stacks
    for lever in ("fused_geglu", "fused_residual_layer_norm", "fused_layout_layer_norm", "fused_group_norm_silu"):
        with getattr(kernels, lever)(denoiser):
            swapped = {type(m).__name__ for m in denoiser.modules() if "forward" in m.__dict__}
        assert swapped == SWAPPED_BY[lever], lever
        assert not [m for m in denoiser.modules() if "forward" in m.__dict__ or "_kernel_fusions" in m.__dict__]
    with kernels.fused_residual_layer_norm(denoiser), kernels.fused_layout_layer_norm(denoiser):
        assert all(m._kernel_fusions == {"residual + LayerNorm", "layout + LayerNorm"} for m in stacks)
    assert not [m for m in stacks if "forward" in m.__dict__]


SWAPPED_BY = {
    "fused_geglu": {"GEGLU"},
    "fused_residual_layer_norm": {"AttentionStack"},
    "fused_layout_layer_norm": {"AttentionStack"},
    "fused_group_norm_silu": {"ResnetBlock"},
}
