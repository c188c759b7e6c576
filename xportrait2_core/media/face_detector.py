"""Finding faces: kornia's YuNet ``FaceDetector`` (the official code uses mediapipe's BlazeFace),
loaded from a local file only, run in batches; and the most prominent face of one picture."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import kornia.contrib.face_detection as kornia_faces
import torch
import torch.nn.functional as F
from kornia.geometry.transform import resize as kornia_resize

from ..weights.checkpoint import CheckpointError, read_state_dict
from .crops import FaceBox, frame_batch, frames_to_images
from .images import MediaError, PathLike

YUNET_FILE_NAME = "yunet_final.pth"
YUNET_URLS = (
    "https://github.com/kornia/data/raw/main/yunet_final.pth",
    "https://huggingface.co/kornia/yunet/resolve/main/yunet_final.pth",
)
# Scores YuNet must reach to count as a face, per head (finest to coarsest), measured on the face
# set of bench/face_threshold.py (issue 34). The coarsest head (stride 64, anchors of 128-256 px at
# detection size) answers pictures without a face (black, flat colours, gradients, noise, a text
# page) with a box over most of the picture scoring up to 0.9: it was trained on 320 px crops that
# always hold a face, where a face that large is an upsampled, smooth one. The official network
# (libfacedetection.train's ONNX export of these weights) gives the same scores, so it is the
# network's own answer, not our input or decoding; real faces that large score above 0.99 there.
DEFAULT_SCORE_THRESHOLD = 0.6
COARSE_HEAD_SCORE_THRESHOLD = 0.95
# Detecting on a copy no larger than this is faster and, on large frames, avoids false
# positives in blurred backgrounds; faces in portraits and driving videos stay far above
# YuNet's 10 px minimum.
DETECTION_LONG_SIDE = 640
# Detections scoring within this of the best one count as equally sure (see most_prominent).
SCORE_TIE_MARGIN = 0.05


class FaceNotFoundError(MediaError):
    """No usable face in an image or video."""


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
# YuNet's four heads: anchors per cell, and how many times each halves the picture.
_ANCHORS_PER_CELL = (3, 2, 2, 3)
_HEAD_STRIDES = (8, 16, 32, 64)


def head_prior_counts(height: int, width: int) -> list[int]:
    """How many of YuNet's outputs (priors) each head gives for a picture of this size, in the
    network's output order: a stride-2 convolution (rounding up), then halvings rounding down."""
    counts = []
    for anchors, stride in zip(_ANCHORS_PER_CELL, _HEAD_STRIDES):
        cells = [((side + 1) // 2 // 2) // (stride // 4) for side in (height, width)]
        counts.append(anchors * cells[0] * cells[1])
    return counts


# kornia 0.9 moved YuNet's prior boxes to kornia.models.yunet and dropped the underscore.
_YUNET_PRIOR_BOX = getattr(kornia_faces, "PriorBox", None) or kornia_faces._PriorBox


class YuNetFaceDetector(kornia_faces.FaceDetector):
    """kornia's ``FaceDetector`` with the input YuNet was trained on whatever kornia's version
    (BGR in [0, 255]: kornia 0.9 flips RGB to BGR itself, 0.7 and 0.8 pass the channels through),
    a score threshold per head (finest to coarsest) and tied scores kept in a fixed order
    (:func:`suppress_non_maxima`)."""

    head_thresholds: tuple[float, float, float, float]

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return image.flip(-3)  # RGB in, BGR to the network

    def postprocess(self, data: dict[str, torch.Tensor], height: int, width: int) -> list[torch.Tensor]:
        loc, conf, iou = data["loc"], data["conf"], data["iou"]
        priors = _YUNET_PRIOR_BOX(self.min_sizes, self.steps, self.clip, image_size=(height, width))
        priors = priors.to(loc.device, loc.dtype)()
        to_pixels = torch.tensor([width, height] * 7, device=loc.device, dtype=loc.dtype)
        scores = (conf[..., 1] * iou[..., 0].clamp(0.0, 1.0)).sqrt()
        bars = torch.cat([
            torch.full((count,), bar, dtype=scores.dtype, device=scores.device)
            for count, bar in zip(head_prior_counts(height, width), self.head_thresholds)
        ])
        detections = []
        for image_loc, image_scores in zip(loc, scores):
            candidates = (image_scores > bars).nonzero()[:, 0]
            rows = kornia_faces._decode(image_loc[candidates], priors[candidates], self.variance) * to_pixels
            kept = suppress_non_maxima(rows, image_scores[candidates], self.nms_threshold, self.top_k)
            detections.append(kept[: self.keep_top_k])
        return detections


def suppress_non_maxima(rows: torch.Tensor, scores: torch.Tensor, iou_threshold: float, top_k: int) -> torch.Tensor:
    """Greedy non-maximum suppression of ``(N, 14)`` rows (box corners, then five landmarks) over
    the ``top_k`` best: ``(k, 15)`` rows with the score appended, best first.

    YuNet's scores saturate: a clearly visible face gets a dozen overlapping boxes scoring exactly
    1.0. An unstable sort (kornia's, before its suppression) puts any of them first, and which one
    changes with the other candidates and with the sort's implementation; here tied boxes keep
    their prior order, so the kept box depends on nothing but the picture."""
    order = scores.argsort(descending=True, stable=True)[:top_k]
    rows, scores = rows[order], scores[order]
    areas = (rows[:, 2] - rows[:, 0]) * (rows[:, 3] - rows[:, 1])
    alive = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
    kept = []
    for best in range(len(rows)):
        if not alive[best]:
            continue
        top_left = torch.maximum(rows[best, :2], rows[:, :2])
        bottom_right = torch.minimum(rows[best, 2:4], rows[:, 2:4])
        overlap = (bottom_right - top_left).clamp(min=0).prod(dim=1)
        alive &= overlap / (areas[best] + areas - overlap) <= iou_threshold
        kept.append(best)
    return torch.cat([rows[kept], scores[kept, None]], dim=1)


def _kornia_detector_around(network: torch.nn.Module, head_thresholds: Sequence[float]) -> YuNetFaceDetector:
    # kornia's FaceDetector always builds its YuNet with pretrained=True, which downloads. For the
    # duration of its constructor the name it builds from returns our locally loaded network.
    with _KORNIA_CONSTRUCTION_LOCK:
        original = kornia_faces.YuNet
        kornia_faces.YuNet = lambda phase, pretrained: network
        try:
            detector = YuNetFaceDetector()  # its postprocess applies the per-head thresholds
        finally:
            kornia_faces.YuNet = original
    detector.head_thresholds = tuple(head_thresholds)
    return detector


def load_kornia_face_detector(
    weights: PathLike,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    coarse_score_threshold: float = COARSE_HEAD_SCORE_THRESHOLD,
) -> YuNetFaceDetector:
    """kornia's YuNet ``FaceDetector`` with weights from a local file (read with ``weights_only=True``):
    a face must score ``score_threshold`` on the three finer heads, ``coarse_score_threshold`` on the
    coarsest one."""
    state = read_state_dict(Path(weights))
    network = kornia_faces.YuNet("test", pretrained=False)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{weights}: not the YuNet face-detector weights kornia uses: {error}") from None
    # Built without pretrained weights the network is left in training mode (BatchNorm batch stats).
    network.eval()
    return _kornia_detector_around(network, (score_threshold,) * 3 + (coarse_score_threshold,))


class FaceDetectorRunner:
    """Runs YuNet on batches of images on a chosen device and dtype.

    :meth:`detect` takes ``(N, 3, H, W)`` float images in ``[0, 1]`` of any size and returns, per
    image, a ``(k, 5)`` float32 CPU tensor of faces ``left, top, right, bottom, score`` in that
    image's pixels, clipped to the image, best score first.
    """

    def __init__(
        self,
        detector: YuNetFaceDetector,
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
        coarse_score_threshold: float = COARSE_HEAD_SCORE_THRESHOLD,
    ) -> FaceDetectorRunner:
        detector = load_kornia_face_detector(weights, score_threshold, coarse_score_threshold)
        return cls(detector, device, dtype, batch_size)

    def _detection_size(self, height: int, width: int) -> tuple[int, int]:
        scale = min(1.0, self.long_side / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _pre_reduced(self, images: torch.Tensor) -> torch.Tensor:
        """Images more than twice the detection size averaged over k x k pixels first (k whole), so
        that the anti-aliased resize below never blurs a full 4K frame; at most twice the detection
        size they are left as they are (the shared media and anything up to 1280 px)."""
        height, width = images.shape[-2:]
        factor = max(height, width) // (2 * self.long_side)
        images = images.to(device=self.device, dtype=self.dtype)
        return F.avg_pool2d(images, factor, ceil_mode=True) if factor > 1 else images

    @torch.inference_mode()
    def _detect_batch(self, images: torch.Tensor, original_size: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """Faces of ``images`` in the pixels of ``original_size`` (what they were reduced from, if
        they were)."""
        height, width = original_size or images.shape[-2:]
        reduced_height, reduced_width = images.shape[-2:]
        size = self._detection_size(reduced_height, reduced_width)
        batch = images.to(device=self.device, dtype=self.dtype)
        if size != (reduced_height, reduced_width):
            batch = kornia_resize(batch, size, interpolation="bilinear", antialias=True)
        # YuNet was trained on pixel values in [0, 255] (YuNetFaceDetector makes them BGR).
        detections = self.detector(batch * 255.0)
        to_image = torch.tensor([width / size[1], height / size[0]] * 2)
        limits = torch.tensor([width, height] * 2, dtype=torch.float32)
        faces = []
        for found in detections:
            result = kornia_faces.FaceDetectorResult(found.float().cpu())
            corners = torch.cat([result.top_left, result.bottom_right], dim=1)
            boxes = torch.minimum((corners * to_image).clamp(min=0.0), limits)
            landmarks = torch.cat([result.get_keypoint(point) for point in kornia_faces.FaceKeypoint], dim=1)
            faces.append(torch.cat([boxes, result.score[:, None], landmarks * to_image[:2].repeat(5)], dim=1))
        return faces

    def detect_with_landmarks(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Like :meth:`detect`, with YuNet's five landmarks appended: ``(k, 15)`` rows of box,
        score, then (x, y) of left eye, right eye, nose, left and right mouth corner."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise MediaError(f"images must be (N, 3, H, W) RGB, got shape {tuple(images.shape)}")
        faces: list[torch.Tensor] = []
        for batch in images.split(self.batch_size):
            faces.extend(self._detect_batch(self._pre_reduced(batch), tuple(batch.shape[-2:])))
        return faces

    def detect(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [faces[:, :5].contiguous() for faces in self.detect_with_landmarks(images)]

    def detect_in_frames(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`detect` for channels-last frames ``(N, H, W, 3)`` (uint8, or float in [0, 1]),
        made into float images one frame at a time: a chunk of 4K frames is never held in float."""
        frames = frame_batch(frames)
        height, width = frames.shape[1:3]
        small = torch.cat([self._pre_reduced(frames_to_images(frame)) for frame in frames])
        faces: list[torch.Tensor] = []
        for batch in small.split(self.batch_size):
            faces.extend(found[:, :5].contiguous() for found in self._detect_batch(batch, (height, width)))
        return faces


def most_prominent(faces: torch.Tensor) -> torch.Tensor:
    """The largest of the ``(k, 5)`` detections that score about as well as the best one."""
    # YuNet scores of clearly visible faces all round to 1.0, so the score alone picks at random
    # between them; it still rules out a big but doubtful detection.
    confident = faces[faces[:, 4] >= faces[:, 4].max() - SCORE_TIE_MARGIN]
    areas = (confident[:, 2] - confident[:, 0]) * (confident[:, 3] - confident[:, 1])
    return confident[areas.argmax()]


def left_to_right(faces: torch.Tensor) -> torch.Tensor:
    """Detection rows sorted by the horizontal centre of their box: how faces are numbered."""
    return faces[((faces[:, 0] + faces[:, 2]) / 2).argsort(stable=True)]


def detect_faces(image: torch.Tensor, detector: FaceDetectorRunner, name: str = "the source image") -> torch.Tensor:
    """Every face of a ``(3, H, W)`` image, numbered left to right: ``(N, 15)`` rows as
    :meth:`FaceDetectorRunner.detect_with_landmarks` gives them.

    Raises :class:`FaceNotFoundError` when there is none."""
    faces = detector.detect_with_landmarks(image.unsqueeze(0))[0]
    if len(faces) == 0:
        raise _no_face_in(name)
    return left_to_right(faces)


def _no_face_in(name: str) -> FaceNotFoundError:
    return FaceNotFoundError(
        f"no face found in {name}: give a portrait in which one face is clearly visible "
        "(frontal or three-quarter view, not tiny)"
    )


def detect_face(image: torch.Tensor, detector: FaceDetectorRunner, name: str = "the source image") -> FaceBox:
    """The most prominent (largest confident) face of a ``(3, H, W)`` image.

    Raises :class:`FaceNotFoundError` when there is none."""
    faces = detector.detect(image.unsqueeze(0))[0]
    if len(faces) == 0:
        raise _no_face_in(name)
    return FaceBox(*most_prominent(faces).tolist())
