"""Still images in and out of the engine, and the error every media problem is reported with.

A loaded image is a float32 tensor ``(3, H, W)`` in ``[0, 1]``, RGB, upright (EXIF orientation
applied), whatever the file held: 8- or 16-bit, grey, palette, with or without transparency.
Transparent pixels are composited over a plain background, because the networks only ever see
opaque RGB.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

PathLike = str | Path
Background = Literal["black", "white"]
# The largest frame H.264 has a level for (6.2: 139,264 macroblocks of 16 x 16, e.g. 8192 x 4352):
# the animation is written at the portrait's size, and a larger video plays almost nowhere.
MAX_VIDEO_PIXELS = 139_264 * 256

# Pillow modes holding one 16- or 32-bit integer grey channel (16-bit grey PNGs open as one of
# these); Pillow cannot convert them to 8-bit RGB without clipping to 255, so they are scaled here.
_WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".wmv", ".mpg", ".mpeg", ".ts"}
_SIXTEEN_BIT_MAX = 65535.0


class MediaError(ValueError):
    """An input or output file that cannot be used; the message names the file and what is wrong."""


def require_existing_file(path: PathLike, what: str) -> Path:
    """The path as a ``Path`` if it is a non-empty regular file this user can read, else a :class:`MediaError`."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{what} not found: {path}")
    if not path.is_file():
        raise MediaError(f"{path} is a folder, not a {what}")
    if path.stat().st_size == 0:
        raise MediaError(f"{path.name} is empty (0 bytes): give a real {what}")
    try:  # a file this user may not read is not a damaged one: say which it is before decoding
        path.open("rb").close()
    except OSError as error:
        raise MediaError(f"cannot read {path}: {error.strerror or error}") from None
    return path


def _looks_like_video(path: Path) -> bool:
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return True
    with path.open("rb") as file:
        head = file.read(12)
    # ISO media (mp4/mov) carries "ftyp" at byte 4; Matroska/WebM starts with the EBML magic.
    return head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3"


def _open_pillow_image(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError:
        raise MediaError(
            f"{path.name} would decode to more than {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} million pixels, Pillow's limit "
            "against decompression bombs: if it is a real picture, scale it down first"
        ) from None
    except UnidentifiedImageError as error:
        if _looks_like_video(path):
            raise MediaError(f"{path.name} is a video, not an image: give a still portrait") from error
        raise MediaError(f"{path.name} is not an image Pillow can read (PNG, JPEG or WebP expected)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise MediaError(f"{path.name} is damaged and cannot be decoded: {error}") from error
    return image


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _wide_grey_to_rgb(image: Image.Image) -> torch.Tensor:
    grey = np.asarray(image, dtype=np.float32) / _SIXTEEN_BIT_MAX
    return torch.from_numpy(np.clip(grey, 0.0, 1.0)).expand(3, -1, -1).contiguous()


def _composite_over(rgba: torch.Tensor, background: Background) -> torch.Tensor:
    rgb, alpha = rgba[:3], rgba[3:]
    backdrop = 1.0 if background == "white" else 0.0
    return rgb * alpha + backdrop * (1.0 - alpha)


def _pillow_to_tensor(image: Image.Image, background: Background) -> torch.Tensor:
    if image.mode in _WIDE_GREY_MODES:
        return _wide_grey_to_rgb(image)
    target_mode = "RGBA" if _has_transparency(image) else "RGB"
    pixels = np.asarray(image.convert(target_mode), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    return _composite_over(tensor, background) if target_mode == "RGBA" else tensor


def load_image(path: PathLike, background: Background = "black", max_pixels: int | None = None) -> torch.Tensor:
    """Read a PNG/JPEG/WebP still as a ``(3, H, W)`` float32 RGB tensor in ``[0, 1]``.

    ``background`` is the colour transparent pixels are composited over: "black" (the default) or
    "white" (better for cut-outs drawn on white). EXIF orientation is applied, so a phone photo
    comes out upright. Grey and palette images become three equal or looked-up channels; 16-bit
    images keep their full range (65535 -> 1.0). A picture of more than ``max_pixels`` is scaled
    down to fit (before it becomes float), and the log says so. Anything that is not a readable
    still image (missing, empty, a video, damaged, a decompression bomb) raises :class:`MediaError`
    naming the file.
    """
    if background not in ("black", "white"):
        raise MediaError(f"background must be 'black' or 'white', not {background!r}")
    path = require_existing_file(path, "image")
    with _open_pillow_image(path) as image:
        upright = ImageOps.exif_transpose(image)
        width, height = upright.size
        if max_pixels is not None and width * height > max_pixels:
            scale = (max_pixels / (width * height)) ** 0.5
            size = (max(1, int(width * scale)), max(1, int(height * scale)))
            logger.info(
                "%s is %dx%d (%.0f million pixels): animated at %dx%d, the largest frame H.264 video has",
                path.name, width, height, width * height / 1e6, *size,
            )
            upright = upright.resize(size, Image.LANCZOS, reducing_gap=3.0)
        return _pillow_to_tensor(upright, background)


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """A ``(3, H, W)`` float image in ``[0, 1]`` (or uint8) as an ``(H, W, 3)`` uint8 array."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise MediaError(f"expected an image tensor of shape (3, H, W), got {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return image.permute(1, 2, 0).cpu().numpy()
