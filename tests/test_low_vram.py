"""Issue 26, the 8 GB card: the reference UNet and motion encoder leave the device once done, and
the two guidance branches run one after the other when memory is short; both give the same video."""

from __future__ import annotations

import copy

import pytest
import torch

from xportrait2_core import low_vram
from xportrait2_core.cli import build_parser
from xportrait2_core.low_vram import LowVramSettings, denoiser_call_bytes, memory_is_short, offloads
from xportrait2_core.pipeline import MOTION_ENCODER, REFERENCE_UNET, XPortrait2Pipeline
from xportrait2_core.render_options import request_from_args
from xportrait2_core.sampling import SamplingSettings
from xportrait2_core.weights.loading import load_models

GIB = 2**30
META = torch.device("meta")


def test_offload_is_on_for_cuda_only_unless_set():
    assert offloads(None, torch.device("cuda", 0))
    assert not offloads(None, torch.device("cpu"))
    assert offloads(True, torch.device("cpu"))
    assert not offloads(False, torch.device("cuda"))


def test_memory_is_short_below_the_doubled_call_and_its_margin():
    doubled = denoiser_call_bytes(2, 24, 64, 64, torch.float16)
    assert 2.5 * GIB < doubled < 3.5 * GIB  # the H200 measurement it is drawn from: about 2.8 GiB
    assert denoiser_call_bytes(2, 24, 64, 64, torch.float32) == 2 * doubled
    assert not memory_is_short(None, doubled)  # no known limit (not CUDA)
    assert not memory_is_short(40 * GIB, doubled)  # an H100 with the denoiser loaded
    assert memory_is_short(3 * GIB, doubled)  # an 8 GB card with the desktop and the denoiser on it
    assert memory_is_short(int(1.2 * doubled), doubled)  # fits, but without the allocator's margin


def test_explicit_setting_wins_over_free_memory(monkeypatch):
    monkeypatch.setattr(low_vram, "available_device_bytes", lambda device: 100 * GIB)
    assert low_vram.runs_guidance_in_sequence(True, torch.device("cpu"), 24, 64, 64, torch.float16)
    monkeypatch.setattr(low_vram, "available_device_bytes", lambda device: 0)
    assert not low_vram.runs_guidance_in_sequence(False, torch.device("cpu"), 24, 64, 64, torch.float16)
    assert low_vram.runs_guidance_in_sequence(None, torch.device("cpu"), 24, 64, 64, torch.float16)


def tiny_pipeline(models, settings: LowVramSettings) -> tuple[XPortrait2Pipeline, dict]:
    config = models.unet_config
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn((1, 4, 8, 8), generator=generator)
    embeds = torch.randn((1, config.cross_attention_dim), generator=generator)
    pipeline = XPortrait2Pipeline(
        models, image_encoder=lambda image: embeds, vae_encoder=lambda image: latent, low_vram=settings
    )
    faces = torch.rand((3, 3, 224, 224), generator=generator)
    inputs = dict(
        source=torch.rand((3, 64, 64), generator=generator),
        source_face=faces[0],
        driving_faces=faces[1:],
        seed=3,
        settings=SamplingSettings(steps=2, context_frames=1, context_overlap=0),
    )
    return pipeline, inputs


def denoiser_batches(pipeline: XPortrait2Pipeline) -> list[int]:
    """The batch size of every denoiser call from now on."""
    sizes = []
    pipeline.models.denoiser.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes


@pytest.fixture(scope="module")
def small_models(weights):
    """The tiny-weights command's networks (its motion encoder is narrow: quick on the CPU)."""
    return load_models(weights, "cpu", torch.float32)


@pytest.fixture()
def models(small_models):
    """A copy that a test may move or hook."""
    return copy.deepcopy(small_models)


def test_guidance_in_sequence_gives_the_batched_latents(models):
    """Equal within fp32 rounding, not bit for bit: every operation of the denoiser works per row,
    but the CPU's convolution and matmul kernels block a batch of 1 and a batch of 2 differently,
    so sums are added in another order (max |diff| about 1e-5 on latents up to about 10)."""
    batched, inputs = tiny_pipeline(models, LowVramSettings(guidance_in_sequence=False))
    batches = denoiser_batches(batched)
    expected = batched.sample(**inputs)
    batched_calls = len(batches)
    in_sequence, _ = tiny_pipeline(models, LowVramSettings(guidance_in_sequence=True))
    latents = in_sequence.sample(**inputs)
    assert batches == [2] * batched_calls + [1] * 2 * batched_calls
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-4)


def test_guidance_goes_in_sequence_when_free_memory_is_short(models, monkeypatch):
    pipeline, inputs = tiny_pipeline(models, LowVramSettings())
    batches = denoiser_batches(pipeline)
    monkeypatch.setattr(low_vram, "available_device_bytes", lambda device: 10 * GIB)
    pipeline.sample(**inputs)
    assert set(batches) == {2}
    batches.clear()
    monkeypatch.setattr(low_vram, "available_device_bytes", lambda device: 1024)
    pipeline.sample(**inputs)
    assert set(batches) == {1}


def test_offload_parks_the_networks_before_sampling_with_the_same_latents(models):
    """Parked on the meta device, which drops their weights: if sampling still needed the
    reference UNet or the motion encoder, it would fail or change."""
    kept, inputs = tiny_pipeline(copy.deepcopy(models), LowVramSettings(offload=False))
    expected = kept.sample(**inputs)
    assert kept.residency.moves == []

    pipeline, _ = tiny_pipeline(models, LowVramSettings(offload=True))
    pipeline.residency.host = META
    seen_by_denoiser = []
    pipeline.models.denoiser.register_forward_pre_hook(
        lambda module, args: seen_by_denoiser.append(
            (pipeline.models.reference_unet.conv_in.weight.device, next(pipeline.models.motion_encoder.parameters()).device)
        )
    )
    latents = pipeline.sample(**inputs)
    assert torch.equal(latents, expected)
    assert pipeline.residency.moves == [(REFERENCE_UNET, META), (MOTION_ENCODER, META)]
    assert set(seen_by_denoiser) == {(META, META)}
    assert pipeline.models.denoiser.conv_in.weight.device == torch.device("cpu")


def test_a_parked_network_is_brought_back_for_the_next_clip(models):
    """The next clip of a batch fetches the parked networks back to the compute device (from the
    meta device, which holds no weights, that copy fails: the attempt is what is checked here;
    the round trip through real host memory needs a GPU, see the next test)."""
    pipeline, inputs = tiny_pipeline(models, LowVramSettings(offload=True))
    pipeline.residency.host = META
    pipeline.sample(**inputs)
    with pytest.raises(NotImplementedError, match="meta"):
        pipeline.encode_motion(inputs["driving_faces"])


@pytest.mark.parametrize(
    "flags, expected",
    [([], LowVramSettings(None, None)), (["--offload", "off", "--guidance-in-sequence", "on"], LowVramSettings(False, True))],
)
def test_the_command_line_settings_reach_the_request(tmp_path, flags, expected):
    args = build_parser().parse_args(["animate", "portrait.png", "take.mp4", "-o", str(tmp_path / "out.mp4"), *flags])
    assert request_from_args(args, args.source, [args.driving], args.output).low_vram == expected
