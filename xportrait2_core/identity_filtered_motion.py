"""The motion stage: face crops -> the motion tokens the denoiser attends to (spec 5.2 step 4).

:func:`encode_tokens` runs the whole motion encoder per batch of crops (the engine API's path).
A node graph shows it as two stages:

1. :func:`encode_features`: face crops -> the motion encoder trunk's 512 features per frame
   (the heavy network, once per frame);
2. :func:`identity_filtered_tokens`: features -> the 32x16 motion tokens the denoiser attends
   to (the box branch with the official neutral box), plus optional artist controls that strip
   more of the driver's identity or tame the motion. With the controls at their defaults the
   tokens equal :func:`encode_tokens`'s.

The controls act on tokens, the quantity the denoiser sees:

* ``relative_to_neutral``: every frame's motion is taken relative to a neutral driving frame and
  applied on top of the source face's own tokens (``source + (frame - neutral)``), so what the
  driver's face looks like at rest does not leak into the animation;
* ``intensity``: scales each frame's deviation from the rest pose (the neutral frame's tokens,
  or the source face's when relative);
* ``smoothing``: Gaussian smoothing of the tokens along time (sigma in frames) against jitter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .media.face_track import gaussian_smooth
from .models.motion_encoder import CROP_SIZE, MOTION_BATCH, MotionEncoder, neutral_boxes
from .progress import ProgressFn, report


@dataclass(frozen=True)
class MotionControls:
    intensity: float = 1.0
    relative_to_neutral: bool = False
    neutral_frame: int = 0
    smoothing: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.intensity == 1.0 and not self.relative_to_neutral and self.smoothing == 0.0


def _encoder_inputs(
    encoder: MotionEncoder,
    faces: torch.Tensor,
    batch_size: int,
    progress: Optional[ProgressFn],
    device: Optional[torch.device],
) -> Iterator[tuple[int, torch.Tensor]]:
    """Face crops (N, 3, S, S) in [0, 1] -> (first index, batch) as the encoder takes them:
    224x224, in [-1, 1], in its dtype on ``device`` (default: where its weights are; ComfyUI's
    dynamic VRAM streams weights to the compute device layer by layer, so there the caller names
    it); progress is reported once a batch is used."""
    if faces.ndim != 4 or faces.shape[1] != 3:
        raise ValueError(f"face crops must be (N, 3, H, W), got {tuple(faces.shape)}")
    count = len(faces)
    if count < 1:
        raise ValueError("no driving frames: the face crops are empty")
    weight = next(encoder.parameters())
    device = weight.device if device is None else device
    for start in range(0, count, batch_size):
        batch = faces[start : start + batch_size].to(device, weight.dtype)
        if batch.shape[-2:] != (CROP_SIZE, CROP_SIZE):
            batch = F.interpolate(batch, size=(CROP_SIZE, CROP_SIZE), mode="bicubic", antialias=True).clamp(0, 1)
        yield start, batch * 2 - 1
        report(progress, "motion", min(start + batch_size, count), count)


@torch.no_grad()
def encode_tokens(
    encoder: MotionEncoder,
    faces: torch.Tensor,
    boxes: Optional[torch.Tensor] = None,
    batch_size: int = MOTION_BATCH,
    progress: Optional[ProgressFn] = None,
) -> torch.Tensor:
    """Face crops (N, 3, S, S) in [0, 1] -> motion tokens (N, 32, 16) on the encoder's device.

    ``boxes`` (N, 3) defaults to [0, 0, 1] per frame, as the official script uses."""
    tokens = []
    for start, batch in _encoder_inputs(encoder, faces, batch_size, progress, device=None):
        box = neutral_boxes(len(batch)) if boxes is None else boxes[start : start + len(batch)]
        tokens.append(encoder(batch, box.to(batch.device, batch.dtype)))
    return torch.cat(tokens)


@torch.no_grad()
def encode_features(
    encoder: MotionEncoder,
    faces: torch.Tensor,
    batch_size: int = MOTION_BATCH,
    progress: Optional[ProgressFn] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Face crops (N, 3, S, S) in [0, 1] -> trunk features (N, 512) on ``device`` (default: the
    encoder's weights' device)."""
    batches = _encoder_inputs(encoder, faces, batch_size, progress, device)
    return torch.cat([encoder.features(batch) for _, batch in batches])


@torch.no_grad()
def tokens_from_features(encoder: MotionEncoder, features: torch.Tensor) -> torch.Tensor:
    """Trunk features (N, 512) -> motion tokens (N, 32, 16) with the official [0, 0, 1] boxes."""
    boxes = neutral_boxes(len(features), device=features.device, dtype=features.dtype)
    return encoder.tokens_from_features(features, boxes)


def apply_controls(driving: torch.Tensor, source: torch.Tensor, controls: MotionControls) -> torch.Tensor:
    """Driving tokens (F, 32, 16) and the source face's tokens (32, 16) -> controlled tokens."""
    if controls.is_identity:
        return driving
    frames = len(driving)
    if not 0 <= controls.neutral_frame < frames:
        raise ValueError(f"neutral frame {controls.neutral_frame} is outside the {frames} driving frames (0..{frames - 1})")
    tokens = driving.float()
    neutral = tokens[controls.neutral_frame]
    rest = neutral
    if controls.relative_to_neutral:
        rest = source.float()
        tokens = rest + (tokens - neutral)
    if controls.intensity != 1.0:
        tokens = rest + controls.intensity * (tokens - rest)
    if controls.smoothing > 0.0 and frames > 1:
        radius = max(1, math.ceil(3 * controls.smoothing))
        tokens = gaussian_smooth(tokens.flatten(1), controls.smoothing, radius).view_as(tokens)
    return tokens.to(driving.dtype)


@torch.no_grad()
def identity_filtered_tokens(
    encoder: MotionEncoder, driving_features: torch.Tensor, source_features: torch.Tensor, controls: MotionControls
) -> tuple[torch.Tensor, torch.Tensor]:
    """(driving tokens (F, 32, 16) after ``controls``, negative tokens (32, 16) of the source face)."""
    driving = tokens_from_features(encoder, driving_features)
    negative = tokens_from_features(encoder, source_features)[0]
    return apply_controls(driving, negative, controls), negative


@torch.no_grad()
def tokens_in_batches(encoder: MotionEncoder, features: torch.Tensor, batch_size: int = MOTION_BATCH) -> torch.Tensor:
    """Trunk features (N, 512) from anywhere (a take just encoded, a motion file) -> motion tokens
    (N, 32, 16) on the encoder's device, batch by batch as :func:`encode_tokens` makes them, so
    that both give the same tokens bit for bit."""
    weight = next(encoder.parameters())
    return torch.cat([
        tokens_from_features(encoder, features[start : start + batch_size].to(weight.device, weight.dtype))
        for start in range(0, len(features), batch_size)
    ])
