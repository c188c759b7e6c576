"""The pack's socket types and the values that travel through them, plus IMAGE <-> engine tensors.

Standard ComfyUI types are used wherever one exists (IMAGE, LATENT with frames as batch, VAE,
CLIP_VISION, SAMPLER, SIGMAS); these custom types carry what has no standard type.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.media.driving_take import DrivingTake
from ..xportrait2_core.media.face_blend import BLENDS, HEAD, FaceRegion
from ..xportrait2_core.media.face_track import DrivingCropPlan
from ..xportrait2_core.media.source_crops import SourcePortrait
from ..xportrait2_core.models.reference_attention import ReferenceKeysValues

XP2Models = io.Custom("XP2_MODELS")  # comfy_adapter.XNemoBundle
XP2Source = io.Custom("XP2_SOURCE")  # SourceFace
XP2DrivingTrack = io.Custom("XP2_DRIVING_TRACK")  # DrivingTrack
XP2DrivingVideo = io.Custom("XP2_DRIVING_VIDEO")  # DrivingVideo
XP2MotionFeatures = io.Custom("XP2_MOTION_FEATURES")  # MotionFeatures
XP2Motion = io.Custom("XP2_MOTION")  # MotionTokens
XP2Reference = io.Custom("XP2_REFERENCE")  # ReferenceAppearance


@dataclass(frozen=True)
class SourceFace:
    """The source portrait's crops and where they came from, for paste-back."""

    portrait: SourcePortrait
    picture: torch.Tensor  # (3, H, W) the full source image in [0, 1]
    regions: tuple[FaceRegion, ...]  # every face of the portrait, left to right: paste-back splits their overlaps
    index: int  # which of ``regions`` this face is


@dataclass(frozen=True)
class DrivingTrack:
    """The driving video's face track: crop boxes per frame and which frames had a detection."""

    plan: DrivingCropPlan
    detected: torch.Tensor  # (F,) bool


@dataclass(frozen=True)
class DrivingVideo:
    """A driving take that stays a file (read again in chunks by each stage) and its face track."""

    take: DrivingTake
    track: DrivingTrack


@dataclass(frozen=True)
class MotionFeatures:
    driving: torch.Tensor  # (F, 512) motion-encoder trunk features of the driving crops
    source: torch.Tensor  # (1, 512) the same for the source face crop
    fps: Optional[Fraction] = None  # the take's exact frame rate, where it is known (a VIDEO, a motion file)


@dataclass(frozen=True)
class MotionTokens:
    driving: torch.Tensor  # (F, 32, 16) identity-filtered motion tokens, one set per frame
    negative: torch.Tensor  # (32, 16) the source face's tokens (unconditional branch)


@dataclass(frozen=True)
class ReferenceAppearance:
    latent: torch.Tensor  # (1, 4, h, w) scaled VAE latent of the reference image
    image_embeds: torch.Tensor  # (1, D) CLIP image embedding
    keys_values: ReferenceKeysValues  # the reference UNet's attention banks as keys/values


def images_to_engine(images: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> contiguous (B, 3, H, W) float in [0, 1] (alpha dropped).

    Contiguous because convolutions pick their kernels by memory layout: a channels-last view
    would give results a few ulp away from the same frames read from a VIDEO."""
    return images[..., :3].movedim(-1, 1).float().contiguous()


def engine_to_images(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> IMAGE (B, H, W, 3)."""
    return images.movedim(1, -1).contiguous()

CATEGORY = "X-Portrait 2"
# -1 on a face or performer index widget: the most prominent face, as with a single face.
LARGEST_INDEX = -1


def blend_input() -> io.Combo.Input:
    return io.Combo.Input(
        "blend", options=list(BLENDS), default=HEAD, optional=True,
        tooltip="head: a feathered ellipse around the head, colour-matched to the portrait (no box-shaped seam); "
        "rectangle: the whole generated square with a feathered border",
    )
