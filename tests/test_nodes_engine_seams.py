"""The two ComfyUI-independent engine modules the node pack added: the split motion stages with
their artist controls, and the SVD VAE key conversion (no ComfyUI needed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xportrait2_core.identity_filtered_motion import (
    MotionControls,
    apply_controls,
    encode_features,
    tokens_from_features,
)
from xportrait2_core.weights.svd_vae_keys import diffusers_to_sgm, is_diffusers_temporal_vae


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


@pytest.fixture(scope="module")
def tiny_svd_vae():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1
    ).eval()


def test_svd_vae_keys_renamed_to_comfyui_layout(tiny_svd_vae):
    state = tiny_svd_vae.state_dict()
    assert is_diffusers_temporal_vae(state)
    converted = diffusers_to_sgm(state)
    assert len(converted) == len(state) - 2  # quant_conv folded into encoder.conv_out
    for key in (
        "decoder.mid.block_1.mix_factor", "decoder.mid.block_1.time_stack.in_layers.2.weight",
        "decoder.mid.attn_1.q.weight", "decoder.up.0.block.1.conv1.weight", "decoder.up.1.upsample.conv.weight",
        "decoder.conv_out.time_mix_conv.weight", "decoder.norm_out.weight", "encoder.down.0.downsample.conv.weight",
        "encoder.down.1.block.0.nin_shortcut.weight", "encoder.mid.attn_1.proj_out.weight",
    ):
        assert key in converted, key
    assert converted["decoder.mid.attn_1.q.weight"].ndim == 4
    # The highest-resolution diffusers up block (the last) is SGM's up.0.
    torch.testing.assert_close(
        converted["decoder.up.0.block.0.conv1.weight"], state["decoder.up_blocks.1.resnets.0.spatial_res_block.conv1.weight"]
    )


def test_folded_quant_conv_gives_the_same_encoder_output(tiny_svd_vae):
    state = tiny_svd_vae.state_dict()
    converted = diffusers_to_sgm(state)
    features = torch.randn(1, state["encoder.conv_out.weight"].shape[1], 8, 8)
    original = F.conv2d(
        F.conv2d(features, state["encoder.conv_out.weight"], state["encoder.conv_out.bias"], padding=1),
        state["quant_conv.weight"], state["quant_conv.bias"],
    )
    folded = F.conv2d(features, converted["encoder.conv_out.weight"], converted["encoder.conv_out.bias"], padding=1)
    torch.testing.assert_close(folded, original, rtol=1e-5, atol=1e-5)
