"""Image loading: every kind of still a user may hand in, and clear errors for everything else."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from harness.media import media, save_image, write_png_16bit
from xportrait2_core.media.images import MediaError, load_image


@pytest.fixture(scope="module")
def photo_pixels() -> np.ndarray:
    """The photo portrait as Pillow decodes it, (H, W, 3) uint8."""
    with Image.open(media("photo_ref.png")) as image:
        return np.asarray(image.convert("RGB"))


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)


@pytest.mark.parametrize("name", ["photo_ref.png", "cartoon_ref.png"])
def test_real_portraits_load_as_rgb_float(name):
    image = load_image(media(name))
    assert image.shape == (3, 512, 512) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.1, "a real portrait has contrast"


def test_png_matches_pillow_exactly(photo_pixels):
    assert torch.equal(load_image(media("photo_ref.png")), as_tensor(photo_pixels))


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_lossy_formats_decode_close_to_the_original(tmp_path, photo_pixels, suffix):
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(photo_pixels).save(path, quality=95)
    difference = (load_image(path) - as_tensor(photo_pixels)).abs().mean()
    assert difference < 0.02


def test_transparency_is_composited_on_the_chosen_background(tmp_path, photo_pixels):
    alpha = np.full(photo_pixels.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0  # fully transparent strip
    alpha[:, 100:200] = 128  # half transparent strip
    path = tmp_path / "cutout.png"
    Image.fromarray(np.dstack([photo_pixels, alpha])).save(path)
    original = as_tensor(photo_pixels)

    on_black, on_white = load_image(path), load_image(path, background="white")

    assert on_black.shape == (3, 512, 512)
    assert torch.all(on_black[:, :, :100] == 0) and torch.all(on_white[:, :, :100] == 1)
    assert torch.allclose(on_black[:, :, 200:], original[:, :, 200:])
    assert torch.allclose(on_black[:, :, 100:200], original[:, :, 100:200] * 128 / 255, atol=1e-6)
    assert torch.allclose(on_white[:, :, 100:200], original[:, :, 100:200] * 128 / 255 + 127 / 255, atol=1e-6)


def test_unknown_background_is_refused():
    with pytest.raises(MediaError, match="background"):
        load_image(media("photo_ref.png"), background="grey")


def test_grey_image_becomes_three_equal_channels(tmp_path, photo_pixels):
    path = tmp_path / "grey.png"
    Image.fromarray(photo_pixels).convert("L").save(path)
    image = load_image(path)
    assert image.shape == (3, 512, 512)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert image.std() > 0.1


def test_palette_images_with_and_without_transparency(tmp_path, photo_pixels):
    palette = Image.fromarray(photo_pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    plain, keyed = tmp_path / "palette.png", tmp_path / "palette_keyed.png"
    palette.save(plain)
    transparent_index = palette.getpixel((0, 0))
    palette.save(keyed, transparency=transparent_index)

    image = load_image(plain)
    assert torch.equal(image, as_tensor(np.asarray(palette.convert("RGB"))))
    assert (image - as_tensor(photo_pixels)).abs().mean() < 0.05

    keyed_image = load_image(keyed, background="white")
    transparent = torch.from_numpy(np.asarray(palette) == transparent_index)
    assert transparent.any()
    assert torch.all(keyed_image[:, transparent] == 1.0)
    assert torch.equal(keyed_image[:, ~transparent], image[:, ~transparent])


def test_16_bit_grey_keeps_its_full_range(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = tmp_path / "grey16.png"
    write_png_16bit(path, values)
    image = load_image(path)
    expected = torch.tensor([0.0, 257 / 65535, 32768 / 65535, 1.0])
    assert torch.allclose(image[0, 0], expected, atol=1e-6)
    assert torch.equal(image[0], image[2])


def test_16_bit_colour_is_scaled_not_clipped(tmp_path):
    pixels = np.zeros((4, 4, 3), np.uint16)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 65535, 32768, 1000
    path = tmp_path / "rgb16.png"
    write_png_16bit(path, pixels)
    red, green, blue = load_image(path)[:, 0, 0].tolist()
    assert red == pytest.approx(1.0)
    assert green == pytest.approx(0.5, abs=0.005)
    assert blue == pytest.approx(1000 / 65535, abs=0.005)


def test_exif_orientation_is_applied(tmp_path, photo_pixels):
    stored = photo_pixels[:300]  # not square, so a missed rotation changes the shape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)

    image = load_image(path)

    upright = as_tensor(np.ascontiguousarray(np.rot90(stored, k=-1)))
    assert image.shape == upright.shape == (3, 512, 300)
    assert (image - upright).abs().mean() < 0.02


def test_save_image_round_trips_through_png(tmp_path):
    image = load_image(media("cartoon_ref.png"))
    path = tmp_path / "copy.png"
    save_image(image, path)
    assert torch.equal(load_image(path), image)
    save_image(torch.rand(3, 7, 5), tmp_path / "float.png")
    assert load_image(tmp_path / "float.png").shape == (3, 7, 5)


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match="not found.*nothing.png"):
        load_image(tmp_path / "nothing.png")


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(MediaError, match="folder"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.png is empty"):
        load_image(path)


@pytest.mark.parametrize("name", ["photo.mp4", "disguised.png"])
def test_a_video_is_refused_as_a_video(tmp_path, name):
    path = tmp_path / name
    shutil.copy(media("driving_60f.mp4"), path)
    with pytest.raises(MediaError, match=f"{name} is a video, not an image: give a still portrait"):
        load_image(path)


def test_truncated_png_is_reported_damaged(tmp_path):
    data = media("photo_ref.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="cut.png is damaged"):
        load_image(path)


def test_random_bytes_are_not_an_image(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="noise.png is not an image"):
        load_image(path)
