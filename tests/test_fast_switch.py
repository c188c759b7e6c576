"""The ``fast`` switch (``--fast``, the Loader's ``fast``): how users reach the fused kernels
(and, beside it, that ``--compile`` reaches the denoiser too).

Where the kernels can run it switches on all four in the denoiser; elsewhere (no CUDA, no
Triton) it says so in one line and the run goes on, giving the video it gives without the
switch. The kernels' arithmetic is proven in ``tests/test_kernels.py``; the Loader's switch in a
real ComfyUI in ``tests/test_nodes_parity.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from harness.media import media
from tests.test_kernels import SWAPPED_BY
from xportrait2_core import animate as animate_module
from xportrait2_core.cli import build_parser, main as cli
from xportrait2_core.kernels import fast
from xportrait2_core.media.video_reader import iter_frames
from xportrait2_core.models.attention_stack import AttentionStack
from xportrait2_core.models.config import UNetConfig
from xportrait2_core.models.operations import LayerFactory, skip_init_operations
from xportrait2_core.models.unet3d import DenoisingUNet3D
from xportrait2_core.render_options import request_from_args


@pytest.fixture
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def meta_denoiser() -> DenoisingUNet3D:
    config = UNetConfig(block_out_channels=(32, 32, 32, 32), attention_heads=2, motion_heads=2, temporal_heads=2)
    return DenoisingUNet3D(config, LayerFactory(operations=skip_init_operations, device="meta"))


def swapped_types(network: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in network.modules() if "forward" in m.__dict__}


def test_why_the_kernels_cannot_run_names_what_is_missing(no_interpreter, monkeypatch):
    assert "CUDA GPU" in fast.why_fast_cannot_run("cpu") and "CPU" in fast.why_fast_cannot_run("cpu")
    assert "MPS" in fast.why_fast_cannot_run("mps")
    monkeypatch.setattr(fast, "triton_installed", lambda: False)
    assert "Triton" in fast.why_fast_cannot_run("cuda:0") and "[kernels]" in fast.why_fast_cannot_run("cuda:0")
    monkeypatch.setattr(fast, "triton_installed", lambda: True)
    assert fast.why_fast_cannot_run("cuda:0") is None


def test_the_switch_turns_on_every_kernel_for_good(no_interpreter, monkeypatch):
    monkeypatch.setattr(fast, "triton_installed", lambda: True)
    denoiser = meta_denoiser()
    assert fast.switch_on_fast_kernels(denoiser, "cuda")
    assert swapped_types(denoiser) == set().union(*SWAPPED_BY.values())
    stacks = [m for m in denoiser.modules() if isinstance(m, AttentionStack)]
    assert stacks and all(m._kernel_fusions == {"residual + LayerNorm", "layout + LayerNorm"} for m in stacks)
    assert fast.switch_on_fast_kernels(denoiser, "cuda"), "switching on twice leaves the network as it is"


def test_the_switch_on_a_cpu_leaves_the_denoiser_plain_and_says_why(no_interpreter, caplog):
    denoiser = meta_denoiser()
    with caplog.at_level(logging.INFO, logger="xportrait2_core"):
        assert not fast.switch_on_fast_kernels(denoiser, "cpu")
    assert not swapped_types(denoiser)
    assert [r.getMessage() for r in caplog.records] == [
        "fast: the fused kernels run on a CUDA GPU, and this run is on the CPU; running the plain kernels instead "
        "(the same video, at the plain speed)"
    ]


@pytest.mark.parametrize("flag, switch", [([], None), (["--fast"], "fast"), (["--compile"], "compile")])
def test_the_speed_options_reach_the_denoiser(weights, monkeypatch, tmp_path, flag, switch):
    args = build_parser().parse_args(
        ["animate", str(media("photo_ref.png")), str(media("driving_60f.mp4")), "-o", str(tmp_path / "out.mp4"),
         "--weights", str(weights), "--offline", *flag]
    )
    request = request_from_args(args, args.source, [args.driving], args.output)
    assert (request.fast, request.compile) == (switch == "fast", switch == "compile")
    seen = []
    monkeypatch.setattr(animate_module, "switch_on_fast_kernels", lambda network, device: seen.append(("fast", network)))
    monkeypatch.setattr(animate_module, "compile_denoiser", lambda network: seen.append(("compile", network)))
    pipeline = animate_module.load_pipeline(request, torch.device("cpu"), torch.float32)
    assert seen == ([(switch, pipeline.models.denoiser)] if switch else [])


def test_fast_on_a_cpu_is_one_line_and_the_same_video(weights, tmp_path, no_interpreter, capfd):
    def render(name: str, *flag: str) -> list[np.ndarray]:
        out = tmp_path / name
        assert cli(["animate", str(media("photo_ref.png")), str(media("driving_60f.mp4")), "-o", str(out),
                    "--weights", str(weights), "--size", "64", "--max-frames", "4", "--no-paste-back",
                    "--steps", "2", "--offline", *flag]) == 0
        return [frame.numpy() for frame in iter_frames(out)]

    plain = render("plain.mp4")
    capfd.readouterr()
    fast_frames = render("fast.mp4", "--fast")
    printed = capfd.readouterr().err
    mentions = [line for line in printed.splitlines() if "fast:" in line]
    assert mentions == [
        "fast: the fused kernels run on a CUDA GPU, and this run is on the CPU; running the plain kernels instead "
        "(the same video, at the plain speed)"
    ], printed[-3000:]
    assert "Traceback" not in printed
    assert len(plain) == len(fast_frames) == 4
    assert all(np.array_equal(a, b) for a, b in zip(plain, fast_frames))
