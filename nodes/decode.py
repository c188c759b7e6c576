"""Decode: the SVD temporal VAE in clips of 25 frames as the official code decodes, into an IMAGE
batch or (long takes) straight into an MP4 handed on as a VIDEO; and a loader that accepts the SVD
VAE in the diffusers layout the official weights folder holds."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..xportrait2_core.media.crops import frames_to_images
from ..xportrait2_core.media.face_blend import FacePaste, paste_onto
from ..xportrait2_core.media.video_reader import iter_frames
from ..xportrait2_core.media.video_writer import VideoWriter, write_animation
from ..xportrait2_core.pipeline import DECODE_CHUNK
from . import comfy_adapter
from .types import (
    CATEGORY,
    DrivingVideo,
    MotionFeatures,
    SourceFace,
    XP2DrivingVideo,
    XP2MotionFeatures,
    XP2Source,
    blend_input,
    engine_to_images,
)


def _frames_per_clip_input() -> io.Int.Input:
    return io.Int.Input(
        "frames_per_clip", default=DECODE_CHUNK, min=1, max=256,
        tooltip="frames decoded together; the temporal VAE blends within a clip (the official code uses 25)",
    )


def _decoded_clips(vae, samples: torch.Tensor, frames_per_clip: int):
    """Frame clips (n, 3, H, W), one decoder call each, ticking the node's progress bar in frames."""
    count = samples.shape[0]
    progress = comfy_adapter.StepProgress(count)
    for start in range(0, count, frames_per_clip):
        clip = comfy_adapter.vae_decode(vae, samples[start : start + frames_per_clip])
        yield clip
        progress.engine_callback("decode", start + len(clip), count)


class XPortrait2LoadTemporalVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2LoadTemporalVAE",
            display_name="X-Portrait 2 Load VAE (SVD temporal)",
            category=CATEGORY,
            description=(
                "Loads a VAE from models/vae like core Load VAE, and also accepts the SVD temporal VAE as diffusers "
                "saves it (stable-video-diffusion-img2vid-xt/vae/diffusion_pytorch_model.safetensors), which core "
                "Load VAE does not recognise."
            ),
            inputs=[io.Combo.Input("vae_name", options=comfy_adapter.vae_file_choices())],
            outputs=[io.Vae.Output(display_name="vae")],
        )

    @classmethod
    def execute(cls, vae_name: str) -> io.NodeOutput:
        return io.NodeOutput(comfy_adapter.load_vae(vae_name))


class XPortrait2TemporalDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2TemporalDecode",
            display_name="X-Portrait 2 Temporal Decode",
            category=CATEGORY,
            description=(
                "Decodes the animation's LATENT clip by clip: the SVD temporal decoder blends frames within one "
                "decode call, and the official code decodes 25 consecutive frames at a time. Any other VAE works "
                "here too (or through core VAE Decode)."
            ),
            inputs=[
                io.Vae.Input("vae"),
                io.Latent.Input("latent"),
                _frames_per_clip_input(),
            ],
            outputs=[io.Image.Output(display_name="frames")],
        )

    @classmethod
    def execute(cls, vae, latent: dict, frames_per_clip: int) -> io.NodeOutput:
        return io.NodeOutput(engine_to_images(torch.cat(list(_decoded_clips(vae, latent["samples"], frames_per_clip)))))


def _rate_and_sound(driving_video: DrivingVideo | None, motion_features: MotionFeatures | None):
    """The frame rate and the sound of the video: the take's, else the motion's rate, silent."""
    if driving_video is not None:
        return driving_video.take.info.fps, driving_video.take.open_source()
    if motion_features is not None and motion_features.fps is not None:
        return motion_features.fps, None
    raise ValueError("connect driving_video (Face Track (driving VIDEO)), or motion_features from Load Motion for its frame rate")


class XPortrait2DecodeToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2DecodeToVideo",
            display_name="X-Portrait 2 Decode to VIDEO",
            category=CATEGORY,
            description=(
                "The long-take end of the graph: decodes the LATENT clip by clip, pastes each clip back into the "
                "source portrait when source_face is connected, and writes it straight into an H.264 MP4 at the "
                "driving take's exact frame rate with its sound copied (not re-encoded) and trimmed. The MP4 goes "
                "to ComfyUI's temp folder (emptied when ComfyUI starts) and only appears once complete; the VIDEO "
                "output refers to it, so Save Video copies it without re-encoding."
            ),
            inputs=[
                io.Vae.Input("vae"),
                io.Latent.Input("latent"),
                XP2DrivingVideo.Input("driving_video", optional=True, tooltip="the take the motion came from: frame rate and sound"),
                XP2MotionFeatures.Input(
                    "motion_features", optional=True,
                    tooltip="instead of driving_video (a motion from Load Motion): its frame rate, and no sound",
                ),
                XP2Source.Input(
                    "source_face", optional=True,
                    tooltip="connect to paste the animation back into the full-resolution source portrait",
                ),
                io.Float.Input(
                    "feather", default=0.1, min=0.0, max=0.5, step=0.01,
                    tooltip="paste-back: width of the soft seam, as a fraction of the square's side",
                ),
                _frames_per_clip_input(),
                blend_input(),
                io.Video.Input(
                    "video_so_far", optional=True,
                    tooltip="several faces: the previous face's Decode to VIDEO, to paste this face into (needs source_face)",
                ),
            ],
            outputs=[io.Video.Output(display_name="video")],
        )

    @classmethod
    def execute(
        cls, vae, latent: dict, feather: float, frames_per_clip: int, driving_video: DrivingVideo | None = None,
        motion_features: MotionFeatures | None = None, source_face: SourceFace | None = None, blend: str = "head",
        video_so_far=None,
    ) -> io.NodeOutput:
        fps, sound = _rate_and_sound(driving_video, motion_features)
        clips = _decoded_clips(vae, latent["samples"], frames_per_clip)
        if source_face is not None:
            picture = source_face.picture
            paste = FacePaste.plan(source_face.regions, source_face.index, *picture.shape[1:], blend, feather)
            # The earlier faces' video is read a frame at a time as well, so memory stays flat.
            earlier = None
            if video_so_far is not None:
                earlier = map(frames_to_images, iter_frames(video_so_far.get_stream_source()))
            clips = paste_onto(picture, clips, paste, earlier)
        elif video_so_far is not None:
            raise ValueError("video_so_far needs source_face: connect the Face Crop (source) of this face")
        path = comfy_adapter.temp_video_path()
        with VideoWriter(path, fps, audio_from=sound) as writer:
            write_animation(writer, clips)
        return io.NodeOutput(comfy_adapter.video_from_file(path))
