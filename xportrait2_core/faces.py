"""Faces: finding them, following one through a video, cutting the network inputs, pasting back.

The networks never see whole pictures. The source portrait gives two crops (spec 6.2): a tight
square around the face for the motion encoder's "negative" motion, and a wider square (about
twice the face) that the reference UNet, the VAE and CLIP see at 512x512 and that the animation
is generated in. The driving video gives one fixed-size square per frame around its face, resized
to 224x224 for the motion encoder (spec 6.3). :func:`paste_back` puts the animated 512 crop back
into the full-resolution source picture.

Detection uses kornia's YuNet ``FaceDetector`` (the official code uses mediapipe's BlazeFace),
loaded from a local file only. Driving videos are handled in two streamed passes so a long video
never sits in memory: :func:`track_face` detects chunk by chunk and keeps only one box per frame,
:func:`plan_driving_crops` turns that small track into smoothed crop boxes, and
:func:`crop_driving_frames` cuts the crops in a second pass over the frames. Deliberate changes
from the official preprocessing: detection on the whole frame (not its left square), frames
without a detection are bridged from their neighbours (the official code crashes), with several
faces the one nearest the track is followed, and driving crops keep exactly the same size.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import kornia.contrib.face_detection as kornia_faces
import torch
import torch.nn.functional as F
from einops import rearrange
from kornia.geometry.transform import resize as kornia_resize

from .checkpoint import CheckpointError, read_state_dict
from .images import MediaError, PathLike

YUNET_FILE_NAME = "yunet_final.pth"
YUNET_URLS = (
    "https://github.com/kornia/data/raw/main/yunet_final.pth",
    "https://huggingface.co/kornia/yunet/resolve/main/yunet_final.pth",
)
# mediapipe's default minimum confidence in the official code; YuNet also has false positives
# (clothing, hands) between 0.3 and 0.5.
DEFAULT_SCORE_THRESHOLD = 0.5
# Detecting on a copy no larger than this is faster and, on large frames, avoids false
# positives in blurred backgrounds; faces in portraits and driving videos stay far above
# YuNet's 10 px minimum.
DETECTION_LONG_SIDE = 640
# Detections scoring within this of the best one count as equally sure (see _most_prominent).
SCORE_TIE_MARGIN = 0.05
# How far (in face sizes) the followed face may be from where it was last seen: the base plus
# this much per frame since then.
FOLLOW_BASE_DISTANCE = 0.5
FOLLOW_DISTANCE_PER_FRAME = 0.25
FACE_CROP_SCALE = 1.1
MOTION_CROP_SIZE = 224
REFERENCE_IMAGE_SIZE = 512
TRACK_SMOOTHING_SIGMA = 5.0
TRACK_SMOOTHING_RADIUS = 20


class FaceNotFoundError(MediaError):
    """No usable face in an image or video."""


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


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


def frames_to_images(frames: torch.Tensor) -> torch.Tensor:
    """Channels-last frames ``(N, H, W, 3)`` or one frame ``(H, W, 3)`` (uint8, or float in ``[0, 1]``
    like ComfyUI's IMAGE) as float32 images ``(N, 3, H, W)`` in ``[0, 1]``."""
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(f"frames must be (N, H, W, 3) RGB, got shape {tuple(frames.shape)}")
    images = rearrange(frames, "n h w c -> n c h w").float()
    return images / 255.0 if frames.dtype == torch.uint8 else images


# ---------------------------------------------------------------------------------------------
# Detector
# ---------------------------------------------------------------------------------------------


def kornia_cache_path() -> Path:
    """Where kornia's ``FaceDetector`` keeps its downloaded weights (torch.hub's checkpoint cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / YUNET_FILE_NAME


def find_yunet_weights(explicit: PathLike | None = None, model_dirs: Sequence[PathLike] = ()) -> Path:
    """The YuNet weights file: ``explicit`` if given, else ``yunet_final.pth`` in the first model
    folder holding it, else kornia's own download cache. Never downloads.

    Raises :class:`CheckpointError` saying which file to fetch from where and where to put it.
    """
    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_file():
            raise CheckpointError(f"face-detector weights not found at {explicit}")
        return explicit
    candidates = [Path(folder) / YUNET_FILE_NAME for folder in model_dirs] + [kornia_cache_path()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    destination = candidates[0]
    looked_in = "\n  ".join(str(c) for c in candidates)
    raise CheckpointError(
        f"The YuNet face-detector weights ({YUNET_FILE_NAME}, 406 kB) were not found. Download\n"
        f"  {YUNET_URLS[0]}\n(mirror: {YUNET_URLS[1]}) on a machine with internet and put it at\n"
        f"  {destination}\nLooked in:\n  {looked_in}"
    )


_KORNIA_CONSTRUCTION_LOCK = threading.Lock()


def _kornia_detector_around(network: torch.nn.Module, score_threshold: float) -> kornia_faces.FaceDetector:
    # kornia's FaceDetector always builds its YuNet with pretrained=True, which downloads. For the
    # duration of its constructor the name it builds from returns our locally loaded network.
    with _KORNIA_CONSTRUCTION_LOCK:
        original = kornia_faces.YuNet
        kornia_faces.YuNet = lambda phase, pretrained: network
        try:
            return kornia_faces.FaceDetector(confidence_threshold=score_threshold)
        finally:
            kornia_faces.YuNet = original


def load_kornia_face_detector(
    weights: PathLike, score_threshold: float = DEFAULT_SCORE_THRESHOLD
) -> kornia_faces.FaceDetector:
    """kornia's YuNet ``FaceDetector`` with weights from a local file (read with ``weights_only=True``)."""
    state = read_state_dict(Path(weights))
    network = kornia_faces.YuNet("test", pretrained=False)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{weights}: not the YuNet face-detector weights kornia uses: {error}") from None
    # Built without pretrained weights the network is left in training mode (BatchNorm batch stats).
    network.eval()
    return _kornia_detector_around(network, score_threshold)


class FaceDetectorRunner:
    """Runs YuNet on batches of images on a chosen device and dtype.

    :meth:`detect` takes ``(N, 3, H, W)`` float images in ``[0, 1]`` of any size and returns, per
    image, a ``(k, 5)`` float32 CPU tensor of faces ``left, top, right, bottom, score`` in that
    image's pixels, clipped to the image, best score first.
    """

    def __init__(
        self,
        detector: kornia_faces.FaceDetector,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
        long_side: int = DETECTION_LONG_SIDE,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.long_side = long_side
        self.detector = detector.to(device=self.device, dtype=dtype).eval()

    @classmethod
    def from_weights(
        cls,
        weights: PathLike,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        batch_size: int = 8,
    ) -> FaceDetectorRunner:
        return cls(load_kornia_face_detector(weights, score_threshold), device, dtype, batch_size)

    def _detection_size(self, height: int, width: int) -> tuple[int, int]:
        scale = min(1.0, self.long_side / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    @torch.inference_mode()
    def _detect_batch(self, images: torch.Tensor) -> list[torch.Tensor]:
        height, width = images.shape[-2:]
        size = self._detection_size(height, width)
        batch = images.to(device=self.device, dtype=self.dtype)
        if size != (height, width):
            batch = kornia_resize(batch, size, interpolation="bilinear", antialias=True)
        # YuNet was trained on pixel values in [0, 255].
        detections = self.detector(batch * 255.0)
        to_image = torch.tensor([width / size[1], height / size[0]] * 2)
        limits = torch.tensor([width, height] * 2, dtype=torch.float32)
        faces = []
        for found in detections:
            found = found.float().cpu()
            boxes = torch.minimum((found[:, :4] * to_image).clamp(min=0.0), limits)
            faces.append(torch.cat([boxes, found[:, 14:15]], dim=1))
        return faces

    def detect(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise MediaError(f"images must be (N, 3, H, W) RGB, got shape {tuple(images.shape)}")
        faces: list[torch.Tensor] = []
        for batch in images.split(self.batch_size):
            faces.extend(self._detect_batch(batch))
        return faces


def _most_prominent(faces: torch.Tensor) -> torch.Tensor:
    """The largest of the ``(k, 5)`` detections that score about as well as the best one."""
    # YuNet scores of clearly visible faces all round to 1.0, so the score alone picks at random
    # between them; it still rules out a big but doubtful detection.
    confident = faces[faces[:, 4] >= faces[:, 4].max() - SCORE_TIE_MARGIN]
    areas = (confident[:, 2] - confident[:, 0]) * (confident[:, 3] - confident[:, 1])
    return confident[areas.argmax()]


def detect_face(image: torch.Tensor, detector: FaceDetectorRunner, name: str = "the source image") -> FaceBox:
    """The most prominent (largest confident) face of a ``(3, H, W)`` image.

    Raises :class:`FaceNotFoundError` when there is none."""
    faces = detector.detect(image.unsqueeze(0))[0]
    if len(faces) == 0:
        raise FaceNotFoundError(
            f"no face found in {name}: give a portrait in which one face is clearly visible "
            "(frontal or three-quarter view, not tiny)"
        )
    return FaceBox(*_most_prominent(faces).tolist())


# ---------------------------------------------------------------------------------------------
# Source image (spec 6.2)
# ---------------------------------------------------------------------------------------------


def scaled_face_square(box: FaceBox, height: int, width: int, scale: float = FACE_CROP_SCALE) -> FaceBox:
    """The square of side ``scale`` x the box's longer side around the same centre, or the box
    itself when that square would leave the picture (the official rule, including its
    ``right <= W - 1`` bound)."""
    side = scale * max(box.width, box.height)
    centre_x, centre_y = box.centre
    square = FaceBox(centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2, box.score)
    leaves = square.left < 0 or square.top < 0 or square.right > width - 1 or square.bottom > height - 1
    return box if leaves else square


def reference_face_crop(
    image: torch.Tensor, box: FaceBox, size: int | None = MOTION_CROP_SIZE
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
    face = detect_face(image, detector, name)
    face_crop, face_crop_box = reference_face_crop(image, face)
    reference, reference_box = reference_image_crop(image, face, reference_size)
    return SourcePortrait(face, face_crop, face_crop_box, reference, reference_box)


# ---------------------------------------------------------------------------------------------
# Driving video (spec 6.3, improved)
# ---------------------------------------------------------------------------------------------


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """Centres ``(F, 2)`` (x, y) of ``(F, 4)`` boxes."""
    return (boxes[:, :2] + boxes[:, 2:4]) / 2


class _FaceFollower:
    """Chooses, frame after frame, the detection that continues the followed face."""

    def __init__(self) -> None:
        self._centre: torch.Tensor | None = None
        self._side = 0.0
        self._frames_since_seen = 0

    def follow(self, faces: torch.Tensor) -> torch.Tensor | None:
        self._frames_since_seen += 1
        if len(faces) == 0:
            return None
        if self._centre is None:
            chosen = _most_prominent(faces)
        else:
            distances = (box_centres(faces) - self._centre).norm(dim=1)
            nearest = int(distances.argmin())
            # Between frames a face moves a small fraction of its size (at most 0.12 in the
            # 12 fps test video); a detection farther than the allowance, which grows while the
            # face is missing, is someone or something else, and the followed face counts as missed.
            allowance = self._side * (FOLLOW_BASE_DISTANCE + FOLLOW_DISTANCE_PER_FRAME * self._frames_since_seen)
            if distances[nearest] > allowance:
                return None
            chosen = faces[nearest]
        self._centre = box_centres(chosen[None])[0]
        self._side = float(max(chosen[2] - chosen[0], chosen[3] - chosen[1]))
        self._frames_since_seen = 0
        return chosen


@dataclass(frozen=True)
class FaceTrack:
    """The followed face's detection in every frame of a video; rows of NaN where it was missed."""

    boxes: torch.Tensor  # (F, 4) left, top, right, bottom in frame pixels
    scores: torch.Tensor  # (F,)
    frame_size: tuple[int, int]  # (height, width)

    @property
    def frame_count(self) -> int:
        return len(self.boxes)

    @property
    def found(self) -> torch.Tensor:
        """``(F,)`` bool: frames where the face was detected."""
        return ~self.boxes.isnan().any(dim=1)


def track_face(
    frame_chunks: Iterable[torch.Tensor], detector: FaceDetectorRunner, name: str = "the driving video"
) -> FaceTrack:
    """Detect faces in chunks of channels-last frames (as :func:`~xportrait2_core.video_io.iter_frames`
    yields them) and follow one face through them: the largest confident face of the first frame
    with a face, then always the detection nearest to where it was. Only the track is kept.

    Raises :class:`FaceNotFoundError` when no frame shows a face.
    """
    follower = _FaceFollower()
    missed = torch.full((5,), math.nan)
    rows: list[torch.Tensor] = []
    frame_size: tuple[int, int] | None = None
    for chunk in frame_chunks:
        images = frames_to_images(chunk)
        if frame_size is not None and tuple(images.shape[-2:]) != frame_size:
            raise MediaError(f"{name}: frame size changes from {frame_size} to {tuple(images.shape[-2:])}")
        frame_size = tuple(images.shape[-2:])
        for faces in detector.detect(images):
            chosen = follower.follow(faces)
            rows.append(missed if chosen is None else chosen)
    if not rows:
        raise MediaError(f"{name} has no frames")
    track = torch.stack(rows)
    if track[:, 0].isnan().all():
        raise FaceNotFoundError(
            f"no face found in any of the {len(rows)} frames of {name}: the driving video must show "
            "one face clearly (frontal or three-quarter view)"
        )
    return FaceTrack(track[:, :4].contiguous(), track[:, 4].contiguous(), frame_size)


def bridge_missing(values: torch.Tensor) -> torch.Tensor:
    """Fill NaN rows of ``(F, C)`` values by linear interpolation between the nearest rows on
    either side; leading/trailing gaps copy the nearest row. Needs at least one complete row."""
    known_frames = (~values.isnan().any(dim=1)).nonzero().squeeze(1)
    if len(known_frames) == 0:
        raise MediaError("cannot bridge a track with no known frame")
    frames = torch.arange(len(values))
    after = torch.searchsorted(known_frames, frames).clamp(max=len(known_frames) - 1)
    before = (after - (known_frames[after] > frames).long()).clamp(min=0)
    start, end = known_frames[before], known_frames[after]
    span = (end - start).clamp(min=1)
    weight = ((frames - start).clamp(min=0) / span).clamp(max=1.0).to(values.dtype).unsqueeze(1)
    return torch.lerp(values[start], values[end], weight)


def _symmetric_indices(count: int, radius: int) -> torch.Tensor:
    # scipy's "reflect" boundary (d c b a | a b c d | d c b a), repeated for signals shorter
    # than the filter radius.
    positions = torch.arange(-radius, count + radius) % (2 * count)
    return torch.where(positions < count, positions, 2 * count - 1 - positions)


def gaussian_smooth(
    values: torch.Tensor, sigma: float = TRACK_SMOOTHING_SIGMA, radius: int = TRACK_SMOOTHING_RADIUS
) -> torch.Tensor:
    """Smooth ``(F, C)`` values along frames with a normalised Gaussian (``scipy.ndimage.gaussian_filter1d``
    with mode "reflect" and the given radius)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = (weights / weights.sum()).to(values.dtype)
    padded = values[_symmetric_indices(len(values), radius)]
    signals = rearrange(padded, "f c -> c 1 f")
    return rearrange(F.conv1d(signals, weights.view(1, 1, -1)), "c 1 f -> f c")


@dataclass(frozen=True)
class DrivingCropPlan:
    """Where to cut every driving frame: a fixed-size box around the smoothed face centre."""

    crop_boxes: torch.Tensor  # (F, 4) int64 left, top, right, bottom, all inside the frame
    centres: torch.Tensor  # (F, 2) smoothed face centres (x, y)
    crop_size: tuple[int, int]  # (width, height), even numbers
    frame_size: tuple[int, int]  # (height, width)

    @property
    def frame_count(self) -> int:
        return len(self.crop_boxes)


def _fixed_crop_size(first_box: torch.Tensor, frame_size: tuple[int, int]) -> tuple[int, int]:
    square = scaled_face_square(FaceBox(*first_box.tolist()), *frame_size)
    height, width = frame_size
    even_width = max(2, min(round(square.width) // 2 * 2, width))
    even_height = max(2, min(round(square.height) // 2 * 2, height))
    return even_width, even_height


def _boxes_around(centres: torch.Tensor, crop_size: tuple[int, int], frame_size: tuple[int, int]) -> torch.Tensor:
    # Round the corner, not each edge, so every crop has exactly the same size, then shift the
    # box back inside the frame (the official code shifts too, but truncates each edge).
    size = torch.tensor(crop_size, dtype=centres.dtype)
    limit = torch.tensor([frame_size[1] - crop_size[0], frame_size[0] - crop_size[1]])
    corners = torch.round(centres - size / 2).long()
    corners = torch.minimum(corners.clamp(min=0), limit)
    return torch.cat([corners, corners + torch.tensor(crop_size)], dim=1)


def plan_driving_crops(
    track: FaceTrack, sigma: float = TRACK_SMOOTHING_SIGMA, radius: int = TRACK_SMOOTHING_RADIUS
) -> DrivingCropPlan:
    """Turn a face track into crop boxes: missed frames bridged, the centres Gaussian-smoothed
    over time, the size fixed by the first frame's face (the 1.1 square, even sides)."""
    boxes = bridge_missing(track.boxes)
    crop_size = _fixed_crop_size(boxes[0], track.frame_size)
    centres = gaussian_smooth(box_centres(boxes), sigma, radius)
    crop_boxes = _boxes_around(centres, crop_size, track.frame_size)
    return DrivingCropPlan(crop_boxes, centres, crop_size, track.frame_size)


def crop_driving_frames(
    frame_chunks: Iterable[torch.Tensor], plan: DrivingCropPlan, size: int | None = MOTION_CROP_SIZE
) -> Iterator[torch.Tensor]:
    """Second pass over the same frames: yields, per chunk, the face crops ``(N, 3, size, size)``
    float in ``[0, 1]`` (``size=None``: the plan's native crop size)."""
    start = 0
    for chunk in frame_chunks:
        images = frames_to_images(chunk)
        end = start + len(images)
        if end > plan.frame_count:
            raise MediaError(f"more frames ({end}) than the face track covers ({plan.frame_count})")
        boxes = plan.crop_boxes[start:end].tolist()
        crops = torch.stack(
            [image[:, top:bottom, left:right] for image, (left, top, right, bottom) in zip(images, boxes)]
        )
        yield crops if size is None else resize_like_pillow(crops, (size, size))
        start = end


# ---------------------------------------------------------------------------------------------
# Paste-back
# ---------------------------------------------------------------------------------------------


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
