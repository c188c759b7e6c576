"""Engine behaviour beyond parity: the context-window schedule, seeded reproducibility,
progress and stopping, input checks, the motion stage and its artist controls."""

from __future__ import annotations

import pytest
import torch

from xportrait2_core.context_windows import context_windows, window_offsets
from xportrait2_core.identity_filtered_motion import (
    MotionControls,
    apply_controls,
    encode_features,
    tokens_from_features,
)
from xportrait2_core.pipeline import XPortrait2Pipeline
from xportrait2_core.progress import Cancelled
from xportrait2_core.sampling import SamplingSettings, seeded_noise


@pytest.mark.parametrize("frames", [24, 25, 50, 97, 230])
@pytest.mark.parametrize("offset", [0, 7, 23])
def test_windows_cover_every_frame(frames, offset):
    windows = context_windows(frames, 24, 4, offset)
    assert all(len(w) == min(24, frames) for w in windows)
    assert set().union(*map(set, windows)) == set(range(frames))
    assert len(windows) == (1 if frames <= 24 else -(-frames // 20))


def test_windows_wrap_around_with_window_relative_order():
    windows = context_windows(50, 24, 4, 7)
    assert [w[0] for w in windows] == [7, 27, 47]
    assert windows[2] == [47, 48, 49] + list(range(0, 21))  # the last window wraps to frame 20
    assert all(len(set(w)) == len(w) for w in windows)


def test_short_video_is_one_window_whatever_the_offset():
    assert context_windows(10, 24, 4, 13) == [list(range(10))]


def test_bad_overlap_is_refused():
    with pytest.raises(ValueError, match="overlap"):
        context_windows(50, 24, 24, 0)


def test_offsets_are_seeded():
    draw = lambda seed: window_offsets(torch.Generator().manual_seed(seed), 35, 24)
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert all(0 <= o < 24 for o in draw(3))


def test_noise_equals_comfyui_batch_noise():
    """Same values as torch.manual_seed(seed); torch.randn((F, 4, h, w)) on the CPU (ComfyUI's prepare_noise)."""
    noise = seeded_noise(5, frames=3, height=2, width=4)
    generator = torch.Generator("cpu").manual_seed(5)
    assert torch.equal(noise[0].transpose(0, 1), torch.randn((3, 4, 2, 4), generator=generator))


@pytest.fixture(scope="module")
def tiny_run(tiny_models):
    """A small animation problem on the tiny golden weights with stand-in CLIP and VAE."""
    config = tiny_models.unet_config
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn((1, 4, 8, 8), generator=generator)
    embeds = torch.randn((1, config.cross_attention_dim), generator=generator)
    pipeline = XPortrait2Pipeline(
        tiny_models,
        image_encoder=lambda image: embeds,
        vae_encoder=lambda image: latent,
        vae_decoder=lambda latents: latents[:, :3].tanh(),
    )
    faces = torch.rand((5, 3, 224, 224), generator=generator)
    inputs = dict(source=torch.rand((3, 64, 64), generator=generator), source_face=faces[0], driving_faces=faces[1:])
    return pipeline, inputs, SamplingSettings(steps=2, context_frames=3, context_overlap=1)


def test_same_seed_same_output_other_seed_differs(tiny_run):
    pipeline, inputs, settings = tiny_run
    first = pipeline.sample(**inputs, seed=11, settings=settings)
    again = pipeline.sample(**inputs, seed=11, settings=settings)
    other = pipeline.sample(**inputs, seed=12, settings=settings)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_progress_counts_and_can_stop(tiny_run):
    pipeline, inputs, settings = tiny_run
    seen = []
    pipeline.sample(**inputs, settings=settings, progress=lambda *event: seen.append(event))
    sampling = [(d, t) for stage, d, t in seen if stage == "sampling"]
    windows = len(context_windows(4, 3, 1, 0))
    assert sampling == [(i, 2 * windows) for i in range(1, 2 * windows + 1)]
    assert ("motion", 4, 4) in seen

    calls = []

    def stop_after_first_call(stage, done, total):
        calls.append(stage)
        return stage != "sampling"

    with pytest.raises(Cancelled, match="sampling after 1 of"):
        pipeline.sample(**inputs, settings=settings, progress=stop_after_first_call)
    assert calls.count("sampling") == 1


def test_animate_decodes_in_chunks(tiny_run):
    pipeline, inputs, settings = tiny_run
    chunks = []
    frames = pipeline.animate(**inputs, settings=settings, progress=lambda s, d, t: chunks.append((s, d, t)))
    assert frames.shape == (4, 3, 8, 8)
    assert frames.min() >= 0 and frames.max() <= 1
    assert [c for c in chunks if c[0] == "decoding"] == [("decoding", 4, 4)]


def test_bad_inputs(tiny_run):
    pipeline, inputs, settings = tiny_run
    with pytest.raises(ValueError, match="multiple of 8"):
        pipeline.sample(**{**inputs, "source": torch.rand(3, 60, 64)}, settings=settings)
    with pytest.raises(ValueError, match="no driving frames"):
        pipeline.sample(**{**inputs, "driving_faces": torch.rand(0, 3, 224, 224)}, settings=settings)
    with pytest.raises(ValueError, match="window offsets"):
        pipeline.sample(**inputs, settings=settings, offsets=[0])


def test_features_then_tokens_equal_the_motion_encoder(tiny_models):
    encoder = tiny_models.motion_encoder
    faces = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0.0, 0.0, 1.0]]).expand(2, 3)
    expected = encoder(faces * 2 - 1, boxes)
    tokens = tokens_from_features(encoder, encode_features(encoder, faces, batch_size=1))
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)


def test_default_controls_leave_tokens_untouched():
    driving = torch.randn(5, 32, 16)
    assert apply_controls(driving, torch.randn(32, 16), MotionControls()) is driving


def test_relative_motion_puts_the_neutral_frame_on_the_source_face():
    driving, source = torch.randn(5, 32, 16), torch.randn(32, 16)
    tokens = apply_controls(driving, source, MotionControls(relative_to_neutral=True, neutral_frame=2))
    torch.testing.assert_close(tokens[2], source)
    torch.testing.assert_close(tokens[4] - tokens[0], driving[4] - driving[0])


def test_intensity_scales_motion_around_the_rest_pose():
    driving = torch.randn(5, 32, 16)
    still = apply_controls(driving, torch.randn(32, 16), MotionControls(intensity=0.0))
    torch.testing.assert_close(still, driving[0].expand_as(driving))
    half = apply_controls(driving, torch.randn(32, 16), MotionControls(intensity=0.5))
    torch.testing.assert_close(half - driving[0], (driving - driving[0]) / 2)


def test_smoothing_reduces_frame_to_frame_jitter():
    driving = torch.randn(40, 32, 16)
    smoothed = apply_controls(driving, torch.randn(32, 16), MotionControls(smoothing=2.0))
    assert smoothed.diff(dim=0).abs().mean() < 0.5 * driving.diff(dim=0).abs().mean()


def test_neutral_frame_outside_the_video_is_a_clear_error():
    with pytest.raises(ValueError, match="outside the 5 driving frames"):
        apply_controls(torch.randn(5, 32, 16), torch.randn(32, 16), MotionControls(relative_to_neutral=True, neutral_frame=5))
