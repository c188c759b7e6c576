"""Crop geometry shared by the source and driving crops: boxes, padded crops and the resizes
that stand in for the official Pillow and scikit-image ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from kornia.geometry.transform import resize as kornia_resize

from .images import MediaError

# The square around a face is this much wider than the detector's box (spec 6.2 and 6.3).
FACE_CROP_SCALE = 1.1


@dataclass(frozen=True)
class FaceBox:
    """A detected face: box corners in image pixels (x right, y down) and the detector's score."""

    left: float
    top: float
    right: float
    bottom: float
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def centre(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2


@dataclass(frozen=True)
class CropBox:
    """An integer pixel rectangle of a picture, ``[left, right) x [top, bottom)``.

    It may reach past the picture's edges; pixels there are black in the crop (and ignored by
    :func:`paste_back`).
    """

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


def crop_with_padding(images: torch.Tensor, box: CropBox) -> torch.Tensor:
    """The ``box`` region of ``(..., C, H, W)`` images, black where it lies outside them."""
    height, width = images.shape[-2:]
    crop = images.new_zeros(*images.shape[:-2], box.height, box.width)
    top, bottom = max(box.top, 0), min(box.bottom, height)
    left, right = max(box.left, 0), min(box.right, width)
    if top < bottom and left < right:
        crop[..., top - box.top : bottom - box.top, left - box.left : right - box.left] = images[
            ..., top:bottom, left:right
        ]
    return crop


def resize_like_pillow(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of ``(N, C, H, W)`` images in ``[0, 1]``, with Pillow-style antialiasing when shrinking.

    Stands in for the official Lanczos (PIL) resize of the motion-encoder crops.
    """
    resized = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
    return resized.clamp(0.0, 1.0)


def resize_like_skimage(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with a Gaussian pre-filter when shrinking: the official reference-image resize
    (``skimage.transform.resize(..., anti_aliasing=True)``)."""
    return kornia_resize(images, size, interpolation="bilinear", antialias=True).clamp(0.0, 1.0)


def frame_batch(frames: torch.Tensor) -> torch.Tensor:
    """Channels-last frames ``(N, H, W, 3)``, given so or as one frame ``(H, W, 3)``."""
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(f"frames must be (N, H, W, 3) RGB, got shape {tuple(frames.shape)}")
    return frames


def frames_to_images(frames: torch.Tensor) -> torch.Tensor:
    """Channels-last frames ``(N, H, W, 3)`` or one frame ``(H, W, 3)`` (uint8, or float in ``[0, 1]``
    like ComfyUI's IMAGE) as float32 images ``(N, 3, H, W)`` in ``[0, 1]``."""
    frames = frame_batch(frames)
    images = rearrange(frames, "n h w c -> n c h w").float()
    return images / 255.0 if frames.dtype == torch.uint8 else images


def scaled_face_square(box: FaceBox, height: int, width: int, scale: float = FACE_CROP_SCALE) -> FaceBox:
    """The square of side ``scale`` x the box's longer side around the same centre, or the box
    itself when that square would leave the picture (the official rule, including its
    ``right <= W - 1`` bound)."""
    side = scale * max(box.width, box.height)
    centre_x, centre_y = box.centre
    square = FaceBox(centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2, box.score)
    leaves = square.left < 0 or square.top < 0 or square.right > width - 1 or square.bottom > height - 1
    return box if leaves else square
