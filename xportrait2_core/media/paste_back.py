"""Paste-back: the animated square put back into the full-resolution source picture."""

from __future__ import annotations

import torch

from .crops import CropBox, resize_like_pillow
from .images import MediaError


def feather_mask(height: int, width: int, feather: float) -> torch.Tensor:
    """``(1, height, width)`` weights: 1 inside, easing to 0 at the border over ``feather`` x the
    shorter side (smoothstep, so the seam has no visible edge)."""
    ramp = feather * min(height, width)
    if ramp <= 0:
        return torch.ones(1, height, width)
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    distance_y = torch.minimum(ys, height - ys)[:, None]
    distance_x = torch.minimum(xs, width - xs)[None, :]
    linear = (torch.minimum(distance_y, distance_x) / ramp).clamp(0.0, 1.0)
    return (linear * linear * (3 - 2 * linear)).unsqueeze(0)


def paste_back(
    full_image: torch.Tensor, animated_crop: torch.Tensor, crop_box: CropBox, feather: float = 0.1
) -> torch.Tensor:
    """Put animated crops back into the full-resolution source picture.

    ``full_image`` is the ``(3, H, W)`` source; ``animated_crop`` one ``(3, h, w)`` frame or a chunk
    ``(N, 3, h, w)`` of any size (512, or upscaled), showing the region ``crop_box`` (the
    reference image's box). Each crop is resized (antialiased) onto its box and blended in with a
    feathered border; pixels outside the box are the source's, untouched. Returns ``(3, H, W)``
    or ``(N, 3, H, W)`` on the source's device.
    """
    if not 0.0 <= feather <= 0.5:
        raise MediaError(f"feather must be between 0 and 0.5 (a fraction of the crop side), got {feather}")
    single = animated_crop.ndim == 3
    crops = (animated_crop.unsqueeze(0) if single else animated_crop).to(full_image.device, full_image.dtype)
    height, width = full_image.shape[-2:]
    top, bottom = max(crop_box.top, 0), min(crop_box.bottom, height)
    left, right = max(crop_box.left, 0), min(crop_box.right, width)
    if top >= bottom or left >= right:
        raise MediaError(f"crop box {crop_box} does not overlap the {width}x{height} picture")
    # The box is integer and axis-aligned, so resizing onto it exactly inverts the crop; unlike a
    # general warp it also antialiases when the crop is larger than the box (e.g. upscaled).
    placed = resize_like_pillow(crops, (crop_box.height, crop_box.width))
    mask = feather_mask(crop_box.height, crop_box.width, feather).to(full_image.device, full_image.dtype)
    rows = slice(top - crop_box.top, bottom - crop_box.top)
    columns = slice(left - crop_box.left, right - crop_box.left)
    output = full_image.expand(len(crops), -1, -1, -1).clone()
    background = output[..., top:bottom, left:right]
    output[..., top:bottom, left:right] = torch.lerp(background, placed[..., rows, columns], mask[..., rows, columns])
    return output[0] if single else output
