"""From a portrait file and a driving video file to a finished MP4 (what ``xportrait2 animate`` runs).

Streams everywhere (:mod:`~xportrait2_core.media.driving_take`): the driving video is read twice in
chunks (face track, then crops that are turned into motion tokens right away), only tokens and
latents are kept for the whole video, and decoded frames are pasted back and written chunk by
chunk. The output file appears only when it is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .media.driving_take import DrivingTake, motion_crops, track_take
from .media.face_detector import FaceDetectorRunner, find_yunet_weights
from .media.face_track import plan_driving_crops
from .media.images import MediaError, load_image
from .media.paste_back import PasteBack, write_animation
from .media.source_crops import REFERENCE_IMAGE_SIZE, prepare_source_portrait
from .media.video_writer import VideoWriter
from .pipeline import XPortrait2Pipeline
from .progress import ProgressFn
from .sampling import SamplingSettings, WindowPredictorFactory
from .weights.loading import default_dtype
from .weights.standalone_models import load_clip_image_encoder, load_temporal_vae


@dataclass(frozen=True)
class AnimateRequest:
    source: Path
    driving: Path
    output: Path
    weights: Path
    seed: int = 0
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    size: int = REFERENCE_IMAGE_SIZE
    max_frames: Optional[int] = None
    paste_back: bool = True
    device: Optional[str] = None
    dtype: Optional[torch.dtype] = None
    face_detector: Optional[Path] = None
    allow_download: bool = True
    overwrite: bool = False


def check_request(request: AnimateRequest) -> None:
    """Refuse what can be refused before any model is loaded."""
    if request.output.exists() and not request.overwrite:
        raise MediaError(f"{request.output} already exists; pass --overwrite to replace it")
    if not request.output.parent.is_dir():
        raise MediaError(f"cannot write {request.output}: folder {request.output.parent} does not exist")
    if request.size % 64 or request.size < 64:
        raise MediaError(f"--size must be a multiple of 64, got {request.size}")
    if request.max_frames is not None and request.max_frames < 2:
        raise MediaError("--max-frames must be at least 2")


def pick_device(requested: Optional[str]) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(request: AnimateRequest, device: torch.device, dtype: torch.dtype) -> XPortrait2Pipeline:
    clip = load_clip_image_encoder(request.weights, device, dtype, request.allow_download)
    vae = load_temporal_vae(request.weights, device, dtype, request.allow_download)
    return XPortrait2Pipeline.from_folder(request.weights, clip, vae.encode, vae.decode, device=device, dtype=dtype)


@dataclass(frozen=True)
class LoadedModels:
    """Everything :func:`animate_files` loads, kept across the jobs of a batch (``xportrait2 batch``)."""

    detector: FaceDetectorRunner
    pipeline: XPortrait2Pipeline


def load_detector(request: AnimateRequest, device: torch.device) -> FaceDetectorRunner:
    return FaceDetectorRunner.from_weights(find_yunet_weights(request.face_detector, [request.weights]), device=device)


def load_all_models(request: AnimateRequest) -> LoadedModels:
    device = pick_device(request.device)
    dtype = request.dtype or default_dtype(device)
    return LoadedModels(load_detector(request, device), load_pipeline(request, device, dtype))


def animate_files(
    request: AnimateRequest,
    progress: Optional[ProgressFn] = None,
    models: Optional[LoadedModels] = None,
    window_predictor: Optional[WindowPredictorFactory] = None,
) -> Path:
    """Render ``request``; ``models`` (from :func:`load_all_models` of the same weights, device and
    dtype) skips the loading, ``window_predictor`` runs the sampler's denoiser calls elsewhere."""
    check_request(request)
    take = DrivingTake.open(lambda: request.driving, request.driving.name, request.max_frames)
    image = load_image(request.source)
    device = pick_device(request.device)
    dtype = request.dtype or default_dtype(device)
    detector = models.detector if models else load_detector(request, device)
    portrait = prepare_source_portrait(image, detector, request.source.name, request.size)
    plan = plan_driving_crops(track_take(take, detector, progress))
    pipeline = models.pipeline if models else load_pipeline(request, device, dtype)
    tokens = [pipeline.encode_motion(crops) for crops in motion_crops(take, plan, progress)]
    latents = pipeline.sample(
        portrait.reference,
        portrait.face_crop,
        motion_tokens=torch.cat(tokens),
        seed=request.seed,
        settings=request.settings,
        progress=progress,
        window_predictor=window_predictor,
    )
    paste_back = PasteBack(image, portrait.reference_box) if request.paste_back else None
    with VideoWriter(request.output, take.info.fps, audio_from=request.driving) as writer:
        write_animation(writer, pipeline.decode(latents, progress=progress), paste_back)
    return request.output
