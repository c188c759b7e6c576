"""Draws the pack's registry icon, ``assets/icon.png`` (400x400; the registry takes up to 800x400),
from the sample media shipped in ``xportrait2_core/media/samples`` (Apache-2.0, see its NOTICE):
a film strip of three frames of the driving take, an arrow, and the still portrait they animate.

    python tools/make_icon.py
"""

from __future__ import annotations

from pathlib import Path

import av
from PIL import Image, ImageDraw, ImageFont, ImageOps

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "xportrait2_core" / "media" / "samples"
ICON = REPO_ROOT / "assets" / "icon.png"
SIZE = 400
# A neutral face, a pout and a tongue out: the expressions the portrait takes over.
DRIVING_FRAMES = (0, 60, 74)
# Drawn at 2x and reduced, for smooth circle and corner edges.
SCALE = 2
TOP_COLOR, BOTTOM_COLOR = (28, 30, 64), (78, 44, 120)
ACCENT = (255, 196, 87)


def driving_frames() -> list[Image.Image]:
    with av.open(str(SAMPLES / "driving.mp4")) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    return [frames[index].convert("RGB") for index in DRIVING_FRAMES]


def gradient(size: int) -> Image.Image:
    column = Image.new("RGB", (1, size))
    for y in range(size):
        t = y / (size - 1)
        column.putpixel((0, y), tuple(round(a + (b - a) * t) for a, b in zip(TOP_COLOR, BOTTOM_COLOR)))
    return column.resize((size, size))


def rounded_mask(size: tuple[int, int], radius: int) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, size[0] - 1, size[1] - 1), radius, fill=255)
    return mask


def film_strip(frames: list[Image.Image], frame_size: int) -> Image.Image:
    """The frames stacked top to bottom on a dark strip with sprocket holes on both edges."""
    margin, gap, hole = frame_size // 5, frame_size // 12, frame_size // 14
    width = frame_size + 2 * margin
    height = len(frames) * frame_size + (len(frames) + 1) * gap
    strip = Image.new("RGBA", (width, height), (12, 12, 20, 255))
    draw = ImageDraw.Draw(strip)
    for y in range(gap, height - hole, 3 * hole):
        for x in (margin // 2 - hole // 2, width - margin // 2 - hole // 2):
            draw.rounded_rectangle((x, y, x + hole, y + hole), hole // 3, fill=(200, 200, 215, 255))
    for index, frame in enumerate(frames):
        picture = ImageOps.fit(frame, (frame_size, frame_size), centering=(0.5, 0.35))
        strip.paste(picture, (margin, gap + index * (frame_size + gap)), rounded_mask(picture.size, frame_size // 10))
    return strip


def portrait_disc(diameter: int, ring: int) -> Image.Image:
    portrait = Image.open(SAMPLES / "portrait.png").convert("RGB")
    face = ImageOps.fit(portrait, (diameter, diameter), centering=(0.5, 0.4))
    disc = Image.new("RGBA", (diameter + 2 * ring, diameter + 2 * ring), (0, 0, 0, 0))
    ImageDraw.Draw(disc).ellipse((0, 0, disc.width - 1, disc.height - 1), fill=ACCENT + (255,))
    mask = Image.new("L", face.size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, diameter - 1, diameter - 1), fill=255)
    disc.paste(face, (ring, ring), mask)
    return disc


def draw_icon() -> Image.Image:
    size = SIZE * SCALE
    canvas = gradient(size).convert("RGBA")
    strip = film_strip(driving_frames(), 72 * SCALE)
    strip_left, strip_top = 26 * SCALE, 30 * SCALE
    canvas.alpha_composite(strip, (strip_left, strip_top))
    disc = portrait_disc(212 * SCALE, 6 * SCALE)
    disc_left, disc_top = size - disc.width - 22 * SCALE, 34 * SCALE
    canvas.alpha_composite(disc, (disc_left, disc_top))

    # The arrow from the driving take to the portrait it drives.
    draw = ImageDraw.Draw(canvas)
    middle = disc_top + disc.height // 2
    start, end = strip_left + strip.width + 8 * SCALE, disc_left - 6 * SCALE
    draw.line((start, middle, end - 14 * SCALE, middle), fill=ACCENT, width=7 * SCALE)
    draw.polygon(
        [(end, middle), (end - 22 * SCALE, middle - 16 * SCALE), (end - 22 * SCALE, middle + 16 * SCALE)], fill=ACCENT
    )

    # Pillow's own scalable font: no system font needed, the same pixels on every machine.
    title = ImageFont.load_default(size=50 * SCALE)
    subtitle = ImageFont.load_default(size=21 * SCALE)
    draw.text((size // 2, 316 * SCALE), "X-Portrait 2", font=title, fill=(255, 255, 255), anchor="mm")
    draw.text((size // 2, 362 * SCALE), "portrait animation \u00b7 X-NeMo", font=subtitle, fill=ACCENT, anchor="mm")

    icon = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    icon.paste(canvas, (0, 0), rounded_mask((size, size), 56 * SCALE))
    return icon.resize((SIZE, SIZE), Image.LANCZOS)


def main() -> None:
    ICON.parent.mkdir(exist_ok=True)
    draw_icon().save(ICON, optimize=True)
    print(f"wrote {ICON.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
