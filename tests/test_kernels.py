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
