"""From a portrait file and a driving video file to a finished MP4 (what ``xportrait2 animate`` runs).

Streams everywhere (:mod:`~xportrait2_core.media.driving_take`): the driving video is read twice in
chunks (face track, then crops that are turned into motion tokens right away), only tokens and
latents are kept for the whole video, and decoded frames are pasted back and written chunk by
chunk. The output file appears only when it is complete.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .compiled_denoiser import compile_denoiser
from .face_drives import DriveMapping, FaceDrive, assign_drives, drives_from_mapping
from .finished_files import OutputClaim, check_output_folder
from .kernels.fast import switch_on_fast_kernels
from .low_vram import LowVramSettings
from .identity_filtered_motion import tokens_in_batches
from .media.driving_take import DrivingTake, track_take
from .media.face_blend import HEAD, FacePaste, composite_faces, face_regions
from .media.face_detector import FaceDetectorRunner, find_yunet_weights
from .media.face_track import LARGEST_PERFORMER, DrivingCropPlan, Performer, plan_driving_crops
from .media.images import MAX_VIDEO_PIXELS, MediaError, load_image, require_existing_file
from .media.portrait_faces import LARGEST, PortraitFaces, describe_faces, parse_face_selection, prepare_portrait_faces
from .media.source_crops import REFERENCE_IMAGE_SIZE, SourcePortrait
from .media.video_writer import WRITABLE_SUFFIXES, VideoWriter, write_animation
from .motion.drivers import EncodedTakes, MotionFileDriver, TakeDriver, motion_of_take, open_motion_driver
from .motion.file import is_motion_file
from .pipeline import XPortrait2Pipeline
from .progress import ProgressFn, progress_of_face
from .sampling import SamplingSettings, WindowPredictorFactory
from .weights.loading import check_weight_files, default_dtype
from .weights.standalone_models import load_clip_image_encoder, load_temporal_vae

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnimateRequest:
    source: Path
    driving: Optional[Path]  # None when ``drive_mapping`` names every video
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
    faces: str = LARGEST  # "largest", "all" or indices such as "0,2" (left to right)
    more_driving: tuple[Path, ...] = ()  # further videos: one per chosen face, in order
    performer: str | int = LARGEST_PERFORMER  # "largest", "each" (performer i for face i) or an index
    drive_mapping: tuple[DriveMapping, ...] = ()  # FACE=VIDEO[:PERFORMER]; replaces faces and driving
    blend: str = HEAD
    hold_last_frame: bool = False  # longer than the shortest driver: shorter ones hold their last frame
    audio_from: Optional[Path] = None  # default: the first driving video
    compile: bool = False  # torch.compile the denoiser (see compiled_denoiser)
    fast: bool = False  # the fused Triton kernels in the denoiser (see kernels.fast)
    low_vram: LowVramSettings = field(default_factory=LowVramSettings)

    @property
    def driving_videos(self) -> list[Path]:
        return ([self.driving] if self.driving is not None else []) + list(self.more_driving)


MAX_SIZE = 2048  # four times the official working size; a 2048 x 2048 window already needs tens of GB


def check_request(request: AnimateRequest) -> None:
    """Refuse what can be refused before any model is loaded or any frame is read."""
    output = request.output
    if output.is_dir():  # else found only when the finished video is renamed into place
        raise MediaError(f"{output} is a folder: -o names the video file to write, e.g. {output / 'animation.mp4'}")
    if output.suffix.lower() not in WRITABLE_SUFFIXES:
        raise MediaError(f"{output.name}: the output video must end in one of {', '.join(sorted(WRITABLE_SUFFIXES))}")
    refuse_existing_output(output, request.overwrite)
    check_output_folder(output)
    inputs = [request.source, *request.driving_videos, *[item.driving for item in request.drive_mapping]]
    inputs += [request.audio_from] if request.audio_from else []
    if any(same_file(output, given) for given in inputs):
        raise MediaError(f"{output} is also an input of this run: write the animation to another file")
    if request.size % 64 or not 64 <= request.size <= MAX_SIZE:
        raise MediaError(f"--size must be a multiple of 64 from 64 to {MAX_SIZE}, got {request.size}")
    if request.max_frames is not None and request.max_frames < 2:
        raise MediaError("--max-frames must be at least 2")
    if request.drive_mapping and (request.driving_videos or request.faces != LARGEST):
        raise MediaError("--drive names every face and video: give it without a driving video or --faces")
    for item in request.drive_mapping:
        require_existing_file(item.driving, f"driving video (given for face {item.face})")
    for video in request.driving_videos:
        require_existing_file(video, "driving video")
    if request.audio_from:
        require_existing_file(request.audio_from, "video")
    pick_device(request.device)
    check_weight_files(request.weights)


def refuse_existing_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise MediaError(f"{output} already exists; pass --overwrite to replace it")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links and ``..`` too)."""
    return Path(a).resolve() == Path(b).resolve()


def pick_device(requested: Optional[str]) -> torch.device:
    """The device asked for (checked: it exists and this PyTorch can use it), else CUDA if there is one."""
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device {requested}: not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: this PyTorch sees no CUDA GPU (it is a CPU build, or no driver is loaded)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: there are {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {requested}: this PyTorch has no Apple GPU (MPS) support here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {requested}: xportrait2 runs on cpu, cuda or mps")
    return device


def load_pipeline(request: AnimateRequest, device: torch.device, dtype: torch.dtype) -> XPortrait2Pipeline:
    clip = load_clip_image_encoder(request.weights, device, dtype, request.allow_download)
    vae = load_temporal_vae(request.weights, device, dtype, request.allow_download)
    pipeline = XPortrait2Pipeline.from_folder(
        request.weights, clip, vae.encode, vae.decode, device=device, dtype=dtype, low_vram=request.low_vram
    )
    if request.fast:
        switch_on_fast_kernels(pipeline.models.denoiser, device)
    if request.compile:
        compile_denoiser(pipeline.models.denoiser)
    return pipeline


@dataclass(frozen=True)
class LoadedModels:
    """Everything :func:`animate_files` loads, kept across the jobs of a batch (``xportrait2 batch``)."""

    detector: FaceDetectorRunner
    pipeline: XPortrait2Pipeline
    # A take that drives several jobs is tracked and encoded once (None: every job encodes it again).
    encoded_takes: Optional[EncodedTakes] = field(default_factory=EncodedTakes)


def load_detector(request: AnimateRequest, device: torch.device) -> FaceDetectorRunner:
    return FaceDetectorRunner.from_weights(find_yunet_weights(request.face_detector, [request.weights]), device=device)


def load_all_models(request: AnimateRequest) -> LoadedModels:
    device = pick_device(request.device)
    dtype = request.dtype or default_dtype(device)
    return LoadedModels(load_detector(request, device), load_pipeline(request, device, dtype))


def choose_faces(request: AnimateRequest, image: torch.Tensor, detector: FaceDetectorRunner) -> tuple[PortraitFaces, list[FaceDrive]]:
    """The portrait's chosen faces (listed in the log with their boxes) and what drives each."""
    selection = tuple(item.face for item in request.drive_mapping) or parse_face_selection(request.faces)
    faces = prepare_portrait_faces(image, detector, selection, request.source.name, request.size)
    for line in describe_faces(faces.detections):
        logger.info("%s: %s", request.source.name, line)
    if request.drive_mapping:
        drives = drives_from_mapping(request.drive_mapping, request.performer)
    else:
        drives = assign_drives(faces.chosen, request.driving_videos, request.performer)
    if len(drives) > 1 and not request.paste_back:
        raise MediaError("--no-paste-back writes one face's square: choose one face, or paste all of them back")
    return faces, drives


Driver = TakeDriver | MotionFileDriver


def plan_drives(
    drives: list[FaceDrive], request: AnimateRequest, detector: FaceDetectorRunner, progress: Optional[ProgressFn],
    models: Optional[LoadedModels] = None,
) -> list[Driver]:
    """What drives each face: every driving video opened once and each of its chosen performers
    tracked once; a motion file (``.safetensors``) read and checked, its performer chosen. With
    ``models`` that remember encoded takes (a batch), a take's performer encoded by an earlier job
    is reused, and one encoded here is remembered."""
    encoded = models.encoded_takes if models else None
    takes: dict[Path, DrivingTake] = {}
    plans: dict[tuple[Path, Performer], DrivingCropPlan] = {}
    reused: dict[tuple[Path, Performer], MotionFileDriver] = {}
    for position, drive in enumerate(drives):
        where = (drive.driving, drive.performer)
        if is_motion_file(drive.driving) or where in plans or where in reused:
            continue
        key = EncodedTakes.key(drive.driving, drive.performer, request.max_frames) if encoded is not None else None
        motion = encoded.get(key) if encoded is not None else None
        face_progress = progress_of_face(progress, position, len(drives))
        if motion is not None:
            logger.info("%s: reusing its motion, encoded once for this batch (no tracking or encoding)", drive.driving.name)
        else:
            if drive.driving not in takes:
                takes[drive.driving] = DrivingTake.open(lambda path=drive.driving: path, drive.driving.name, request.max_frames)
            plans[where] = plan_driving_crops(track_take(takes[drive.driving], detector, face_progress, drive.performer))
            if key is not None:
                motion = motion_of_take(models.pipeline.motion_encoder(), takes[drive.driving], [plans[where]], face_progress)
                encoded.put(key, motion)
                logger.info("%s: motion encoded once for this batch; later jobs with this take reuse it", drive.driving.name)
        if motion is not None:
            reused[where] = MotionFileDriver(motion, 0, drive.driving.name)
    return [
        reused[d.driving, d.performer] if (d.driving, d.performer) in reused else
        open_motion_driver(d.driving, d.performer, request.max_frames) if is_motion_file(d.driving)
        else TakeDriver(takes[d.driving], plans[d.driving, d.performer])
        for d in drives
    ]


def sample_faces(
    pipeline: XPortrait2Pipeline,
    portraits: Sequence[SourcePortrait],
    drivers: Sequence[Driver],
    request: AnimateRequest,
    frames: int,
    progress: Optional[ProgressFn] = None,
    window_predictor: Optional[WindowPredictorFactory] = None,
) -> list[torch.Tensor]:
    """Each face's latents, one face after another on the same models (so memory holds one face's
    work at a time), each exactly what a run of that face alone gives. Every face gets ``frames``
    frames, or all of its driver's with ``hold_last_frame``."""
    all_latents = []
    for position, (portrait, driver) in enumerate(zip(portraits, drivers)):
        face_progress = progress_of_face(progress, position, len(portraits))
        encoder = pipeline.motion_encoder()
        tokens = tokens_in_batches(encoder, driver.features(encoder, face_progress))
        all_latents.append(
            pipeline.sample(
                portrait.reference,
                portrait.face_crop,
                motion_tokens=tokens if request.hold_last_frame else tokens[:frames],
                seed=request.seed,
                settings=request.settings,
                progress=face_progress,
                window_predictor=window_predictor,
            )
        )
    return all_latents


def sound_source(request: AnimateRequest, drives: Sequence[FaceDrive]) -> Optional[Path]:
    """The video whose sound the animation gets: the one named, else the first driving video (a
    motion file has no sound: without a name the animation is silent)."""
    first = drives[0].driving
    return request.audio_from or (None if is_motion_file(first) else first)


def animate_files(
    request: AnimateRequest,
    progress: Optional[ProgressFn] = None,
    models: Optional[LoadedModels] = None,
    window_predictor: Optional[WindowPredictorFactory] = None,
) -> Path:
    """Render ``request``; ``models`` (from :func:`load_all_models` of the same weights, device and
    dtype) skips the loading, ``window_predictor`` runs the sampler's denoiser calls elsewhere.

    The output's name is claimed before anything is loaded and given up when the video is under
    it or the run failed: a second run started meanwhile with the same output is refused, as it
    would be once the video exists (``overwrite`` replaces a finished video, never one being made)."""
    check_request(request)
    with OutputClaim(request.output):
        refuse_existing_output(request.output, request.overwrite)  # again: another run may have just finished it
        return _render_claimed(request, progress, models, window_predictor)


def _render_claimed(
    request: AnimateRequest,
    progress: Optional[ProgressFn],
    models: Optional[LoadedModels],
    window_predictor: Optional[WindowPredictorFactory],
) -> Path:
    image = load_image(request.source, max_pixels=MAX_VIDEO_PIXELS)
    device = pick_device(request.device)
    dtype = request.dtype or default_dtype(device)
    detector = models.detector if models else load_detector(request, device)
    faces, drives = choose_faces(request, image, detector)
    drivers = plan_drives(drives, request, detector, progress, models)
    lengths = [driver.frame_count for driver in drivers]
    frames = max(lengths) if request.hold_last_frame else min(lengths)
    pipeline = models.pipeline if models else load_pipeline(request, device, dtype)
    all_latents = sample_faces(pipeline, faces.portraits, drivers, request, frames, progress, window_predictor)
    with VideoWriter(request.output, drivers[0].fps, audio_from=sound_source(request, drives)) as writer:
        if not request.paste_back:
            write_animation(writer, pipeline.decode(all_latents[0], progress=progress))
            return request.output
        height, width = image.shape[-2:]
        regions = face_regions(faces.detections, height, width)
        pastes = [FacePaste.plan(regions, index, height, width, request.blend) for index in faces.chosen]
        decoded = [
            pipeline.decode(latents, progress=progress_of_face(progress, position, len(drives)))
            for position, latents in enumerate(all_latents)
        ]
        write_animation(writer, composite_faces(image, decoded, pastes, frames))
    return request.output
