"""How visible the paste-back seam is (issue 14): the old rectangle blend against the head blend.

A synthetic "animated" crop stands in for the model's output: the source square of each shared
portrait shifted by a few pixels, rotated a few degrees and colour-shifted, so that, as with a
real animation, its background does not match the photo's. Both blends paste it back. Along the
border of that blend's mask (where its weight is between 0.02 and 0.98) the table gives the mean
squared gradient of the result, of the photo, and of their difference: the seam is the part of
the result's gradient that the photo does not have, so the last column is the seam's energy.
Prints a table; asserts nothing.

    python bench/seam_energy.py [--shift 6] [--degrees 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from kornia.geometry.transform import rotate

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDIA = REPO_ROOT.parent / "shared" / "media"
sys.path.insert(0, str(REPO_ROOT))

from xportrait2_core.media.crops import crop_with_padding  # noqa: E402
from xportrait2_core.media.face_blend import HEAD, RECTANGLE, FacePaste, face_regions  # noqa: E402
from xportrait2_core.media.face_detector import FaceDetectorRunner, detect_faces  # noqa: E402
from xportrait2_core.media.images import load_image  # noqa: E402

COLOUR_SHIFT = torch.tensor([0.08, -0.03, -0.06])[:, None, None]


def synthetic_animation(square: torch.Tensor, shift: int, degrees: float) -> torch.Tensor:
    """The source square moved, turned and tinted: ``(1, 3, s, s)``."""
    moved = torch.roll(square, shifts=(shift, shift), dims=(-2, -1))
    turned = rotate(moved[None], torch.tensor([degrees]), padding_mode="border")
    return (turned + COLOUR_SHIFT).clamp(0, 1)


def gradient_energy(image: torch.Tensor) -> torch.Tensor:
    """Per pixel squared gradient magnitude (forward differences, summed over channels) ``(H, W)``."""
    dy = torch.zeros_like(image)
    dx = torch.zeros_like(image)
    dy[..., :-1, :] = image[..., 1:, :] - image[..., :-1, :]
    dx[..., :, :-1] = image[..., :, 1:] - image[..., :, :-1]
    return (dx * dx + dy * dy).sum(dim=-3)


def seam_energy(
    picture: torch.Tensor, detections: torch.Tensor, blend: str, shift: int, degrees: float
) -> tuple[float, float, float]:
    height, width = picture.shape[-2:]
    regions = face_regions(detections, height, width)
    paste = FacePaste.plan(regions, 0, height, width, blend)
    animated = synthetic_animation(crop_with_padding(picture, regions[0].box), shift, degrees)
    result = paste.add(picture[None].clone(), picture, animated)[0]
    border = torch.zeros(height, width, dtype=torch.bool)
    window = paste.window
    border[window.top : window.bottom, window.left : window.right] = (paste.weights[0] > 0.02) & (paste.weights[0] < 0.98)
    return tuple(gradient_energy(image)[border].mean().item() for image in (result, picture, result - picture))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shift", type=int, default=6, help="pixels the synthetic animation is moved by")
    parser.add_argument("--degrees", type=float, default=4.0, help="degrees it is turned by")
    args = parser.parse_args()
    detector = FaceDetectorRunner.from_weights(SHARED_MEDIA / "yunet_final.pth")
    print(f"synthetic animation: shifted {args.shift} px, rotated {args.degrees} deg, colour {COLOUR_SHIFT.flatten().tolist()}")
    print(f"{'portrait':18} {'blend':10} {'result':>10} {'photo':>10} {'seam (difference)':>18}")
    for name in ("photo_ref.png", "cartoon_ref.png"):
        picture = load_image(SHARED_MEDIA / name)
        detections = detect_faces(picture, detector, name)
        for blend in (RECTANGLE, HEAD):
            result, photo, seam = seam_energy(picture, detections, blend, args.shift, args.degrees)
            print(f"{name:18} {blend:10} {result:10.5f} {photo:10.5f} {seam:18.5f}")


if __name__ == "__main__":
    main()
