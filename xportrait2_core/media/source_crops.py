"""The two crops of the source portrait (spec 6.2): a tight square around the face for the motion
encoder's "negative" motion, and a wider square (about twice the face) that the reference UNet,
the VAE and CLIP see at 512x512 and that the animation is generated in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.motion_encoder import CROP_SIZE
from .crops import CropBox, FaceBox, crop_with_padding, resize_like_pillow, resize_like_skimage, scaled_face_square
from .face_detector import FaceDetectorRunner, detect_face

REFERENCE_IMAGE_SIZE = 512


def reference_face_crop(
    image: torch.Tensor, box: FaceBox, size: int | None = CROP_SIZE
) -> tuple[torch.Tensor, CropBox]:
    """The tight face square of a ``(3, H, W)`` source image (the negative motion's input).

    Returns the crop resized to ``size`` x ``size`` (``None``: native size) and its box in source
    pixels.
    """
    square = scaled_face_square(box, *image.shape[-2:])
    crop_box = CropBox(int(square.left), int(square.top), int(square.right), int(square.bottom))
    crop = crop_with_padding(image, crop_box)
    if size is not None:
        crop = resize_like_pillow(crop.unsqueeze(0), (size, size))[0]
    return crop, crop_box


def _widened_box(box: FaceBox) -> CropBox:
    # increase_area 0.5 with aspect preservation: each side grows by at least half the box, and
    # the shorter side grows more so that the result is about 2 x the longer side, square.
    width_growth = max(0.5, (2 * box.height - box.width) / (2 * box.width))
    height_growth = max(0.5, (2 * box.width - box.height) / (2 * box.height))
    return CropBox(
        int(box.left - width_growth * box.width),
        int(box.top - height_growth * box.height),
        int(box.right + width_growth * box.width),
        int(box.bottom + height_growth * box.height),
    )


def _overflows(box: CropBox, height: int, width: int) -> tuple[int, int, int, int]:
    return -box.left, box.right - width, -box.top, box.bottom - height


def _inside(box: CropBox, height: int, width: int) -> bool:
    return max(_overflows(box, height, width)) <= 0


def _shifted(box: CropBox, dx: int, dy: int) -> CropBox:
    return CropBox(box.left + dx, box.top + dy, box.right + dx, box.bottom + dy)


def _shift_inside_if_it_fits(box: CropBox, height: int, width: int) -> CropBox:
    # The official rule: per axis, a box overflowing on one side only and short enough for that
    # axis is shifted back in, but the shift is kept only if the box then lies entirely inside.
    left, right, top, bottom = _overflows(box, height, width)
    if left > 0 and left + right <= 0 and _inside(_shifted(box, left, 0), height, width):
        box = _shifted(box, left, 0)
    elif right > 0 and left + right <= 0 and _inside(_shifted(box, -right, 0), height, width):
        box = _shifted(box, -right, 0)
    if top > 0 and top + bottom <= 0 and _inside(_shifted(box, 0, top), height, width):
        box = _shifted(box, 0, top)
    elif bottom > 0 and top + bottom <= 0 and _inside(_shifted(box, 0, -bottom), height, width):
        box = _shifted(box, 0, -bottom)
    return box


def reference_image_box(box: FaceBox, height: int, width: int) -> CropBox:
    """The region of the source picture the animation is generated in (spec 6.2): about twice
    the face, square, shifted inside the picture when possible, else reaching past its edges."""
    return _shift_inside_if_it_fits(_widened_box(box), height, width)


def reference_image_crop(
    image: torch.Tensor, box: FaceBox, size: int = REFERENCE_IMAGE_SIZE
) -> tuple[torch.Tensor, CropBox]:
    """The reference image: :func:`reference_image_box` of a ``(3, H, W)`` source, black where
    it leaves the picture, resized to ``size`` x ``size``. Returns it and the box for :func:`paste_back`."""
    crop_box = reference_image_box(box, *image.shape[-2:])
    crop = crop_with_padding(image, crop_box)
    return resize_like_skimage(crop.unsqueeze(0), (size, size))[0], crop_box


@dataclass(frozen=True)
class SourcePortrait:
    """Everything the pipeline needs from the source picture."""

    face: FaceBox
    face_crop: torch.Tensor  # (3, 224, 224): negative motion input
    face_crop_box: CropBox
    reference: torch.Tensor  # (3, S, S), S = 512 officially: reference UNet / VAE / CLIP input
    reference_box: CropBox  # where ``reference`` (and the animation) sits in the source


def prepare_source_portrait(
    image: torch.Tensor,
    detector: FaceDetectorRunner,
    name: str = "the source image",
    reference_size: int = REFERENCE_IMAGE_SIZE,
) -> SourcePortrait:
    """Detect the face of a ``(3, H, W)`` source image and cut both crops (the reference image
    at ``reference_size`` pixels square, 512 officially)."""
    return portrait_from_face(image, detect_face(image, detector, name), reference_size)


def portrait_from_face(image: torch.Tensor, face: FaceBox, reference_size: int = REFERENCE_IMAGE_SIZE) -> SourcePortrait:
    """Both crops of one known face of a ``(3, H, W)`` source image."""
    face_crop, face_crop_box = reference_face_crop(image, face)
    reference, reference_box = reference_image_crop(image, face, reference_size)
    return SourcePortrait(face, face_crop, face_crop_box, reference, reference_box)
