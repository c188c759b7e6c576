"""The tiny test weights: a narrow motion encoder that the weights folder describes, calibrated so
that the driving face and the portrait both show in the output (what lets the end-to-end tests
see the driving path at all), and official files that load exactly as before."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from harness.media import media
from xportrait2_core.cli import main as cli
from xportrait2_core.media.face_detector import FaceDetectorRunner
from xportrait2_core.media.face_track import crop_driving_frames, plan_driving_crops, track_face
from xportrait2_core.media.video_reader import iter_frames
from xportrait2_core.models.config import ConfigError, MotionEncoderConfig
from xportrait2_core.models.motion_encoder import MOTION_BATCH, neutral_boxes
from xportrait2_core.testing.tiny_weights import TINY_MOTION_ENCODER, write_tiny_weights
from xportrait2_core.weights.checkpoint import MOTION_ENCODER, CheckpointError
from xportrait2_core.weights.loading import MOTION_ENCODER_CONFIG, load_models

FRAMES = 12


@pytest.fixture(scope="module")
def models(weights):
    return load_models(weights, "cpu", torch.float32)


@pytest.fixture(scope="module")
def real_crops() -> dict[str, torch.Tensor]:
    """The motion crops of the first frames of both shared driving takes, in [0, 1]."""
    detector = FaceDetectorRunner.from_weights(media("yunet_final.pth"))
    crops = {}
    for name in ("driving_60f.mp4", "driving_230f.mp4"):
        chunks = lambda: iter_frames(media(name), max_frames=FRAMES, chunk_size=MOTION_BATCH)  # noqa: E731
        plan = plan_driving_crops(track_face(chunks(), detector, name))
        crops[name] = torch.cat(list(crop_driving_frames(chunks(), plan)))
    return crops


def tokens(models, crops: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
    boxes = neutral_boxes(len(crops)) if boxes is None else boxes
    with torch.no_grad():
        return models.motion_encoder(crops * 2 - 1, boxes)


def test_the_folder_describes_its_narrow_motion_encoder(weights, models, tiny_models):
    described = MotionEncoderConfig.from_file(weights / MOTION_ENCODER_CONFIG)
    assert described == TINY_MOTION_ENCODER != MotionEncoderConfig()
    assert models.motion_encoder.config == TINY_MOTION_ENCODER
    assert models.motion_encoder.model.conv1.out_channels == TINY_MOTION_ENCODER.stem_channels
    # Official files (the golden fixtures' folders have no description) build the official encoder.
    assert tiny_models.motion_encoder.config == MotionEncoderConfig()
    assert tiny_models.motion_encoder.model.conv1.out_channels == 64


def test_tokens_follow_the_driving_face_with_about_unit_spread(models, real_crops):
    a, b = (tokens(models, crops) for crops in real_crops.values())
    spread = a.std(dim=0).mean().item()  # per token element, over the frames of one real take
    assert 0.5 < spread < 2.0, spread
    assert (a[1:] - a[:-1]).abs().mean() > 0.2, "neighbouring frames of a take differ"
    assert (a - b).abs().mean() > 0.5, "two takes differ"
    # Two different crops with the same box (the collapsed encoder gave the same tokens, < 1e-4).
    assert (tokens(models, real_crops["driving_60f.mp4"][:1]) - tokens(models, real_crops["driving_230f.mp4"][:1])).abs().mean() > 0.5
    boxes = neutral_boxes(FRAMES).clone()
    boxes[:, :2] += 0.2
    assert (tokens(models, real_crops["driving_60f.mp4"], boxes) - a).abs().mean() > 0.1, "the box counts too"


def test_same_seed_writes_the_same_weights(tmp_path):
    first, again, other = (write_tiny_weights(tmp_path / name, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    for name in (f"{MOTION_ENCODER}.pth", "xnemo_denoising_unet.pth", "xnemo_reference_unet.pth"):
        state, same, different = (torch.load(folder / name, weights_only=True) for folder in (first, again, other))
        assert all(torch.equal(state[k], same[k]) for k in state), name
        assert not all(torch.equal(state[k], different[k]) for k in state), name


def test_a_description_that_does_not_fit_the_file_is_one_clear_error(weights, tmp_path):
    folder = tmp_path / "weights"
    shutil.copytree(weights, folder)
    (folder / MOTION_ENCODER_CONFIG).unlink()  # the narrow file read as the official architecture
    with pytest.raises(CheckpointError, match="motion encoder"):
        load_models(folder)
    (folder / MOTION_ENCODER_CONFIG).write_text('{"stem_channels": 16, "mid_channels": 33}')
    with pytest.raises(ConfigError, match=f"{MOTION_ENCODER_CONFIG}.*mid_channels must be a multiple of 32"):
        load_models(folder)
    (folder / MOTION_ENCODER_CONFIG).write_text('{"stem_width": 16}')
    with pytest.raises(ConfigError, match="stem_width"):
        load_models(folder)
    (folder / MOTION_ENCODER_CONFIG).write_text("{not json")
    with pytest.raises(ConfigError, match=f"{MOTION_ENCODER_CONFIG}: not readable"):
        load_models(folder)


def test_convert_to_another_folder_keeps_the_description(weights, tmp_path, capsys):
    out = tmp_path / "converted"
    out.mkdir()
    assert cli(["convert", str(weights / f"{MOTION_ENCODER}.pth"), "-o", str(out)]) == 0
    assert json.loads((out / MOTION_ENCODER_CONFIG).read_text()) == json.loads((weights / MOTION_ENCODER_CONFIG).read_text())
    assert cli(["doctor", "--weights", str(weights)]) == 0
    assert "narrower than the official one" in capsys.readouterr().out
