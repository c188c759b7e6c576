"""A small, versioned set of pictures with and without a face, built at run time (issue 34).

Faces: the shared portraits and frames of both shared driving takes, and what a user gives made
from them: rescaled (256 to 4K), cropped close, small in a wide picture, mirrored, turned as a plane
(a stand-in for three-quarter views, which the shared media lacks), and each take's most turned
frame. Each comes with where its face is: the box the detector finds
on the unaltered original (all score about 1.0 there), moved and scaled with the picture.

No face: black, white, greys, noise, gradients, flat colours, a text page, drawn scenes, and the
real portraits and frames with the head painted over or cropped away.

Everything is made from ``../shared/media`` with fixed seeds: the same set on every machine. Raise
``FACE_SET_VERSION`` when a picture is added, removed or made differently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from kornia.geometry.linalg import transform_points
from kornia.geometry.transform import get_perspective_transform, warp_perspective

from harness.media import media, take_frames
from xportrait2_core.media.crops import FaceBox, frames_to_images
from xportrait2_core.media.images import load_image

FACE_SET_VERSION = 1
PORTRAITS = ("photo_ref.png", "cartoon_ref.png")
# Every n-th frame (10 of each take), and the most turned frame: the nose farthest off the middle
# of the eyes (0.05 and 0.16 eye distances, of every 4th frame; the takes are nearly frontal).
TAKES = {"driving_230f.mp4": 23, "driving_60f.mp4": 6}
MOST_TURNED = {"driving_230f.mp4": 164, "driving_60f.mp4": 48}
GREY = 0.45


@dataclass(frozen=True)
class Picture:
    name: str
    image: torch.Tensor  # (3, H, W) float RGB in [0, 1]
    face: FaceBox | None  # where the face is; None: there is none


Locate = Callable[[torch.Tensor], FaceBox]


def _resized(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True)[0].clamp(0, 1)


def _moved(box: FaceBox, scale_x: float, scale_y: float, left: float = 0.0, top: float = 0.0) -> FaceBox:
    return FaceBox(
        box.left * scale_x + left, box.top * scale_y + top, box.right * scale_x + left, box.bottom * scale_y + top
    )


def _placed(
    image: torch.Tensor, face: FaceBox, side: int, canvas: tuple[int, int], at: tuple[int, int]
) -> tuple[torch.Tensor, FaceBox]:
    """``image`` scaled to ``side`` square and put at ``at`` (top, left) on a grey canvas (height, width)."""
    height, width = canvas
    top, left = at
    picture = torch.full((3, height, width), GREY)
    picture[:, top : top + side, left : left + side] = _resized(image, side, side)
    scale = side / image.shape[-1]
    return picture, _moved(face, scale, scale, left, top)


def _close_up(image: torch.Tensor, face: FaceBox, margin: float = 1.25, size: int = 512) -> tuple[torch.Tensor, FaceBox]:
    """The square ``margin`` x the face's longer side around its centre, scaled to ``size``."""
    side = margin * max(face.width, face.height)
    centre_x, centre_y = face.centre
    left = int(max(0, centre_x - side / 2))
    top = int(max(0, centre_y - side / 2))
    right = int(min(image.shape[-1], centre_x + side / 2))
    bottom = int(min(image.shape[-2], centre_y + side / 2))
    crop = image[:, top:bottom, left:right]
    scale_x, scale_y = size / (right - left), size / (bottom - top)
    return _resized(crop, size, size), _moved(_moved(face, 1, 1, -left, -top), scale_x, scale_y)


def _mirrored(image: torch.Tensor, face: FaceBox) -> tuple[torch.Tensor, FaceBox]:
    width = image.shape[-1]
    return image.flip(-1), FaceBox(width - face.right, face.top, width - face.left, face.bottom)


def _head_painted_over(image: torch.Tensor, face: FaceBox, grow: float = 1.6) -> torch.Tensor:
    """The picture with a box ``grow`` x the face (the whole head, hair and ears) painted in the
    mean colour of the picture's border: the background and shoulders stay."""
    height, width = image.shape[-2:]
    centre_x, centre_y = face.centre
    half_w, half_h = grow * face.width / 2, grow * face.height / 2
    left, right = int(max(0, centre_x - half_w)), int(min(width, centre_x + half_w))
    top, bottom = int(max(0, centre_y - half_h)), int(min(height, centre_y + half_h))
    border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1).mean(dim=1)
    out = image.clone()
    out[:, top:bottom, left:right] = border[:, None, None]
    return out


def _beside_the_head(image: torch.Tensor, face: FaceBox) -> list[tuple[str, torch.Tensor]]:
    """The strips of the picture left, right and below the head, each scaled to 256 high."""
    height, width = image.shape[-2:]
    left = int(max(0, face.left - 0.3 * face.width))
    right = int(min(width, face.right + 0.3 * face.width))
    below = int(min(height, face.bottom + 0.25 * face.height))
    strips = [("left", image[:, :, :left]), ("right", image[:, :, right:]), ("below", image[:, below:, :])]
    out = []
    for side, strip in strips:
        if min(strip.shape[-2:]) >= 48:
            scale = 256 / strip.shape[-2]
            out.append((side, _resized(strip, 256, max(64, round(strip.shape[-1] * scale)))))
    return out


def _flat(colour: tuple[float, float, float], height: int = 512, width: int = 512) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.float32)[:, None, None].expand(3, height, width).clone()


def _gradients() -> list[tuple[str, torch.Tensor]]:
    ramp = torch.linspace(0, 1, 512)
    rows, columns = ramp[:, None].expand(512, 512), ramp[None, :].expand(512, 512)
    yy, xx = torch.meshgrid(ramp * 2 - 1, ramp * 2 - 1, indexing="ij")
    radial = (1 - (xx**2 + yy**2).sqrt() / 1.42).clamp(0, 1)
    return [
        ("gradient black to white", torch.stack([columns] * 3)),
        ("gradient blue to orange", torch.stack([rows, 0.3 + 0.3 * rows, 1 - rows])),
        ("gradient diagonal colour", torch.stack([columns, rows, (rows + columns) / 2])),
        ("gradient radial", torch.stack([radial, radial * 0.8, radial * 0.5])),
        ("gradient dark", torch.stack([columns * 0.2] * 3)),
    ]


def _noises() -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(FACE_SET_VERSION)
    uniform = [torch.rand(3, 512, 512, generator=generator) for _ in range(2)]
    normal = (0.5 + 0.15 * torch.randn(3, 512, 512, generator=generator)).clamp(0, 1)
    blobs = _resized(torch.rand(3, 16, 16, generator=generator), 512, 512)
    return [("noise uniform", uniform[0]), ("noise uniform 2", uniform[1]), ("noise normal", normal),
            ("noise coarse blobs", blobs), ("noise uniform 256", _resized(uniform[1], 256, 256))]


def _text_page(dark_on_light: bool = True) -> torch.Tensor:
    paper, ink = ((250, 248, 240), (20, 20, 20)) if dark_on_light else ((25, 25, 35), (230, 230, 230))
    page = Image.new("RGB", (512, 640), paper)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default()
    words = ("the detector sees a page of text with words lines and margins but no face at all " * 3).split()
    rng = np.random.default_rng(FACE_SET_VERSION)
    for line in range(40):
        text = " ".join(rng.choice(words, size=10))
        draw.text((24, 16 + 15 * line), text, fill=ink, font=font)
    return torch.from_numpy(np.asarray(page).copy()).permute(2, 0, 1).float() / 255


def _drawn_scene(seed: int, height: int, width: int) -> torch.Tensor:
    """Sky, ground, a sun, houses with windows, trees: a picture with no person in it."""
    rng = np.random.default_rng(seed)
    scene = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(scene)
    horizon = int(height * rng.uniform(0.5, 0.7))
    for y in range(horizon):  # sky gradient
        t = y / horizon
        draw.line([(0, y), (width, y)], fill=(int(90 + 100 * t), int(150 + 70 * t), 235))
    draw.rectangle([0, horizon, width, height], fill=(70, 130, 60))
    sun = int(rng.uniform(0.1, 0.9) * width), int(0.15 * height)
    draw.ellipse([sun[0] - 20, sun[1] - 20, sun[0] + 20, sun[1] + 20], fill=(250, 220, 90))
    for _ in range(3):
        left = int(rng.uniform(0, 0.8) * width)
        house_w, house_h = int(rng.uniform(0.12, 0.2) * width), int(rng.uniform(0.1, 0.2) * height)
        colour = tuple(int(c) for c in rng.integers(80, 220, 3))
        draw.rectangle([left, horizon - house_h, left + house_w, horizon], fill=colour)
        draw.polygon([(left - 4, horizon - house_h), (left + house_w + 4, horizon - house_h),
                      (left + house_w // 2, horizon - house_h - house_h // 2)], fill=(140, 50, 40))
        for window in range(2):
            wx = left + (window + 1) * house_w // 3 - 4
            draw.rectangle([wx, horizon - house_h * 2 // 3, wx + 8, horizon - house_h // 3], fill=(40, 40, 60))
    for _ in range(4):
        x = int(rng.uniform(0, 1) * width)
        draw.rectangle([x - 3, horizon - 10, x + 3, horizon + 15], fill=(90, 60, 30))
        draw.ellipse([x - 18, horizon - 45, x + 18, horizon - 5], fill=(40, 110, 40))
    return torch.from_numpy(np.asarray(scene).copy()).permute(2, 0, 1).float() / 255


def faceless_pictures() -> list[Picture]:
    """The synthetic pictures without a face (the issue's table and more)."""
    made = [
        ("black", _flat((0, 0, 0))), ("white", _flat((1, 1, 1))), ("grey", _flat((0.5, 0.5, 0.5))),
        ("very dark grey", _flat((0.03, 0.03, 0.03))), ("dark grey", _flat((0.12, 0.12, 0.12))),
        ("flat orange", _flat((1.0, 0.55, 0.1))), ("flat skin tone", _flat((0.87, 0.68, 0.55))),
        ("flat navy", _flat((0.05, 0.08, 0.3))), ("flat green", _flat((0.2, 0.6, 0.25))),
        ("flat 256 colour", _flat((0.3, 0.5, 0.7), 256, 256)), ("flat 256 brown", _flat((0.35, 0.2, 0.1), 256, 256)),
        ("black 4K", _flat((0, 0, 0), 2160, 3840)), ("black 1280x720", _flat((0, 0, 0), 720, 1280)),
        *_gradients(), *_noises(),
        ("noise 4K", _resized(torch.rand(3, 540, 960, generator=torch.Generator().manual_seed(7)), 2160, 3840)),
        ("text page", _text_page()), ("text page dark", _text_page(dark_on_light=False)),
        ("scene 256", _drawn_scene(1, 256, 256)), ("scene 640x480", _drawn_scene(2, 480, 640)),
        ("scene 512", _drawn_scene(3, 512, 512)), ("scene 1280x720", _drawn_scene(4, 720, 1280)),
    ]
    return [Picture(name, image, None) for name, image in made]


def real_originals() -> list[tuple[str, torch.Tensor]]:
    """The shared portraits, every n-th frame of both takes and their most turned frame, as they are."""
    originals = [(name, load_image(media(name))) for name in PORTRAITS]
    for take, step in TAKES.items():
        frames = take_frames(max(10 * step, MOST_TURNED[take] + 1), media(take))
        for index in [*range(0, 10 * step, step), MOST_TURNED[take]]:
            originals.append((f"{take}#{index}", frames_to_images(torch.from_numpy(frames[index]))[0]))
    return originals


def _turned(image: torch.Tensor, face: FaceBox, squeeze: float = 0.35) -> tuple[torch.Tensor, FaceBox]:
    """The picture as a plane turned about its vertical axis (the right side farther away, shorter
    and nearer the middle): a stand-in for a three-quarter view, which the shared media lacks."""
    height, width = image.shape[-2:]
    corners = torch.tensor([[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]])
    far = squeeze * height / 2
    moved = torch.tensor([[0.0, 0.0], [width * (1 - squeeze / 2), far], [width * (1 - squeeze / 2), height - far],
                          [0.0, height]])
    homography = get_perspective_transform(corners[None], moved[None])
    turned = warp_perspective(image[None], homography, (height, width), padding_mode="border")[0]
    box = torch.tensor([[face.left, face.top], [face.right, face.top], [face.right, face.bottom], [face.left, face.bottom]])
    mapped = transform_points(homography, box[None])[0]
    return turned.clamp(0, 1), FaceBox(*mapped.min(dim=0).values.tolist(), *mapped.max(dim=0).values.tolist())


def face_pictures(locate: Locate) -> list[Picture]:
    """The pictures with one face, each with its box: ``locate`` gives the face of an original."""
    pictures = []
    for name, image in real_originals():
        face = locate(image)
        pictures.append(Picture(name, image, face))
        if "#" in name and not name.endswith("#0"):
            continue  # of the takes, the first frame gets the variants below
        height, width = image.shape[-2:]
        for side in (256, 1024):
            pictures.append(Picture(f"{name} at {side}", _resized(image, side, side), _moved(face, side / width, side / height)))
        pictures.append(Picture(f"{name} close-up", *_close_up(image, face)))
        pictures.append(Picture(f"{name} mirrored", *_mirrored(image, face)))
        pictures.append(Picture(f"{name} turned", *_turned(image, face)))
        pictures.append(Picture(f"{name} small in 640x480", *_placed(image, face, 120, (480, 640), (300, 60))))
        pictures.append(Picture(f"{name} in 1280x720", *_placed(image, face, 400, (720, 1280), (200, 700))))
        if "#" not in name:  # 4K pictures are 100 MB each in float: the portraits only
            pictures.append(Picture(f"{name} in 4K", *_placed(image, face, 1024, (2160, 3840), (568, 1408))))
            pictures.append(Picture(f"{name} small in 4K", *_placed(image, face, 640, (2160, 3840), (1200, 300))))
    return pictures


def cut_away_pictures(locate: Locate) -> list[Picture]:
    """The real portraits and some frames without their face: the head painted over, and the
    strips beside and below it."""
    pictures = []
    for name, image in real_originals():
        if "#" in name and not name.endswith(("#0", "#92", "#30")):
            continue
        face = locate(image)
        pictures.append(Picture(f"{name} head painted over", _head_painted_over(image, face), None))
        pictures.extend(Picture(f"{name} {side} of the head", strip, None) for side, strip in _beside_the_head(image, face))
    return pictures


def build_face_set(locate: Locate) -> list[Picture]:
    """Every picture of the set: with a face (and its box) and without."""
    return face_pictures(locate) + faceless_pictures() + cut_away_pictures(locate)
