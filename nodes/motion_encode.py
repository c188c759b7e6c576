"""Motion Encode: driving face crops (and the source face crop) -> per-frame motion features,
from crops in an IMAGE batch or cut from a driving VIDEO as it streams."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Optional

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.identity_filtered_motion import encode_features
from ..xportrait2_core.media.driving_take import counted, motion_crops
from ..xportrait2_core.models.motion_encoder import MOTION_BATCH
from . import comfy_adapter
from .types import (
    CATEGORY,
    DrivingVideo,
    MotionFeatures,
    XP2DrivingVideo,
    XP2Models,
    XP2MotionFeatures,
    images_to_engine,
)


def _source_face_input() -> io.Image.Input:
    return io.Image.Input("source_face", tooltip="the source's face crop (Face Crop (source))")


def _encode(xnemo_models, driving_chunks: Iterable[torch.Tensor], source_face: torch.Tensor, fps: Optional[Fraction] = None) -> MotionFeatures:
    """Features of every driving chunk (N, 3, S, S) and of the source face crop IMAGE."""
    source = encode_source_face(xnemo_models, source_face)  # first: a wrong input is refused before the take is read
    device = comfy_adapter.make_resident(xnemo_models.motion_encoder)
    encoder = xnemo_models.models.motion_encoder
    output = comfy_adapter.output_device()
    # Each chunk's features leave the compute device at once: only (F, 512) is kept for the take.
    driving = torch.cat([encode_features(encoder, chunk, device=device).to(output) for chunk in driving_chunks])
    return MotionFeatures(driving, source, fps)


def encode_source_face(xnemo_models, source_face: torch.Tensor) -> torch.Tensor:
    """The source face crop IMAGE's trunk features (1, 512) (the negative of guidance)."""
    if source_face.shape[0] != 1:
        raise ValueError(
            f"source_face must be the one face crop of the source portrait, got {source_face.shape[0]} images "
            "(are driving_faces and source_face swapped?)"
        )
    device = comfy_adapter.make_resident(xnemo_models.motion_encoder)
    source = encode_features(xnemo_models.models.motion_encoder, images_to_engine(source_face), device=device)
    return source.to(comfy_adapter.output_device())


class XPortrait2MotionEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2MotionEncode",
            display_name="X-Portrait 2 Motion Encode",
            category=CATEGORY,
            description="Runs the motion encoder once per driving frame and once on the source face crop.",
            inputs=[
                XP2Models.Input("xnemo_models"),
                io.Image.Input("driving_faces", tooltip="face crops of the driving video (Face Track & Crop)"),
                _source_face_input(),
            ],
            outputs=[XP2MotionFeatures.Output(display_name="motion_features")],
        )

    @classmethod
    def execute(cls, xnemo_models, driving_faces: torch.Tensor, source_face: torch.Tensor) -> io.NodeOutput:
        count = driving_faces.shape[0]
        progress = comfy_adapter.StepProgress(count)
        batches = (images_to_engine(driving_faces[i : i + MOTION_BATCH]) for i in range(0, count, MOTION_BATCH))
        features = _encode(xnemo_models, counted(batches, "motion", count, progress.engine_callback), source_face)
        return io.NodeOutput(features)


class XPortrait2MotionEncodeVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2MotionEncodeVideo",
            display_name="X-Portrait 2 Motion Encode (driving VIDEO)",
            category=CATEGORY,
            description=(
                "Reads the driving take again in chunks, cuts each frame's face crop along the track and runs the "
                "motion encoder on it right away: only 512 numbers per frame are kept."
            ),
            inputs=[
                XP2Models.Input("xnemo_models"),
                XP2DrivingVideo.Input("driving_video", tooltip="from Face Track (driving VIDEO)"),
                _source_face_input(),
            ],
            outputs=[XP2MotionFeatures.Output(display_name="motion_features")],
        )

    @classmethod
    def execute(cls, xnemo_models, driving_video: DrivingVideo, source_face: torch.Tensor) -> io.NodeOutput:
        plan = driving_video.track.plan
        progress = comfy_adapter.StepProgress(plan.frame_count)
        crops = motion_crops(driving_video.take, plan, progress.engine_callback)
        return io.NodeOutput(_encode(xnemo_models, crops, source_face, driving_video.take.info.fps))
