"""A picture of the portrait with every face's box and number drawn on it, so an artist can see
which index is which face."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .images import to_uint8_hwc

BOX_COLOUR = (255, 220, 0)
CHOSEN_COLOUR = (0, 255, 120)


def numbered_faces(image: torch.Tensor, detections: torch.Tensor, chosen: tuple[int, ...] = ()) -> torch.Tensor:
    """``(3, H, W)`` in [0, 1] with each ``(N, 15)`` detection's box and index drawn (the chosen
    ones in green); returns the same layout."""
    picture = Image.fromarray(to_uint8_hwc(image))
    draw = ImageDraw.Draw(picture)
    line = max(2, round(min(picture.size) / 200))
    font = ImageFont.load_default(size=max(14, round(min(picture.size) / 12)))
    for index, (left, top, right, bottom) in enumerate(detections[:, :4].tolist()):
        colour = CHOSEN_COLOUR if index in chosen else BOX_COLOUR
        draw.rectangle((left, top, right, bottom), outline=colour, width=line)
        draw.text((left + 2 * line, top + line), str(index), fill=colour, font=font, stroke_width=line, stroke_fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 255.0
