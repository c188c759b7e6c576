"""Motion files and edits in time: Save Motion, Load Motion, and Trim / Loop / Retime / Join on the
motion features, before ID-Filtered Motion Latents (the identity filter).

A saved motion is what Motion Encode gives (the driving take's trunk features and its exact frame
rate), so Load Motion's output plugs in where Motion Encode's does and gives the same latents. The
file format, its checks and the edits are :mod:`xportrait2_core.motion`'s, shared with the CLI.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction

from comfy_api.v0_0_2 import io

from ..xportrait2_core.motion import edits
from ..xportrait2_core.motion.file import Motion, check_encoder, encoder_fingerprint, load_motion, parse_fps, save_motion
from . import comfy_adapter
from .motion_encode import encode_source_face
from .types import CATEGORY, MotionFeatures, XP2Models, XP2MotionFeatures

UNITS = ("frames", "seconds")


def _motion_of(features: MotionFeatures, what: str) -> Motion:
    """Features as a one-performer :class:`Motion` (the encoder is checked when saving and loading)."""
    if features.fps is None:
        raise ValueError(
            f"{what} needs the take's frame rate: connect Motion Encode (driving VIDEO) or Load Motion, "
            "not Motion Encode of an IMAGE batch"
        )
    return Motion((features.driving.float(),), features.fps, encoder="")


def _features_of(motion: Motion, like: MotionFeatures) -> MotionFeatures:
    return MotionFeatures(motion.performers[0].to(like.driving.dtype), like.source, motion.fps)


def _features_input(name: str = "motion_features") -> XP2MotionFeatures.Input:
    return XP2MotionFeatures.Input(name, tooltip="from Motion Encode (driving VIDEO), Load Motion or another edit")


def _features_output() -> XP2MotionFeatures.Output:
    return XP2MotionFeatures.Output(display_name="motion_features")


class XPortrait2SaveMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2SaveMotion",
            display_name="X-Portrait 2 Save Motion",
            category=CATEGORY,
            description=(
                "Saves the take's motion (identity-free motion features, its exact frame rate, the motion encoder's "
                "fingerprint) as a .motion.safetensors file in the output folder, to drive any portrait later with "
                "Load Motion, or with xportrait2 animate. No image of the performer and no sound is saved."
            ),
            inputs=[
                XP2Models.Input("xnemo_models"),
                _features_input(),
                io.String.Input("filename_prefix", default="xportrait2/motion",
                                tooltip="the file's name in the output folder; a / makes subfolders"),
                io.String.Input("frame_rate", default="", optional=True,
                                tooltip="only for features of an IMAGE batch (no frame rate of their own): 25, 30000/1001, ..."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, xnemo_models, motion_features: MotionFeatures, filename_prefix: str, frame_rate: str = "") -> io.NodeOutput:
        fps = motion_features.fps or (parse_fps(frame_rate) if frame_rate.strip() else None)
        motion = _motion_of(MotionFeatures(motion_features.driving, motion_features.source, fps), "Save Motion")
        encoder = encoder_fingerprint(xnemo_models.models.motion_encoder)
        path = save_motion(Motion(motion.performers, motion.fps, encoder, ("ComfyUI",)), comfy_adapter.motion_save_path(filename_prefix))
        return io.NodeOutput(ui={"text": [path.name]})


class XPortrait2LoadMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2LoadMotion",
            display_name="X-Portrait 2 Load Motion",
            category=CATEGORY,
            description=(
                "Loads a motion file (Save Motion, or xportrait2 motion) from the input folder or the output folder: "
                "the motion features of one performer and the take's frame rate, plus the source face's, for "
                "ID-Filtered Motion Latents exactly as Motion Encode gives them. A file of another motion encoder is refused."
            ),
            inputs=[
                XP2Models.Input("xnemo_models"),
                io.Combo.Input("motion", options=comfy_adapter.motion_file_names(),
                               tooltip="a .motion.safetensors file in the input folder, or saved in the output folder"),
                io.Image.Input("source_face", tooltip="the source's face crop (Face Crop (source))"),
                io.Int.Input("performer", default=0, min=0, max=15, tooltip="which of the file's performers, in face order"),
            ],
            outputs=[_features_output()],
        )

    @classmethod
    def fingerprint_inputs(cls, xnemo_models=None, motion: str = "", **kwargs):
        return hashlib.sha256(comfy_adapter.motion_file_path(motion).read_bytes()).hexdigest()

    @classmethod
    def execute(cls, xnemo_models, motion: str, source_face, performer: int) -> io.NodeOutput:
        path = comfy_adapter.motion_file_path(motion)
        loaded = load_motion(path)
        check_encoder(loaded, xnemo_models.models.motion_encoder, path.name)
        driving = loaded.performer(performer, path.name).to(comfy_adapter.output_device())
        source = encode_source_face(xnemo_models, source_face)
        return io.NodeOutput(MotionFeatures(driving.to(source.dtype), source, loaded.fps))


class XPortrait2MotionTrim(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2MotionTrim",
            display_name="X-Portrait 2 Motion Trim",
            category=CATEGORY,
            description="Keeps the motion from start to end (end not kept; 0 = to the last frame), in frames or seconds.",
            inputs=[
                _features_input(),
                io.Float.Input("start", default=0.0, min=0.0, max=1e6, step=1.0),
                io.Float.Input("end", default=0.0, min=0.0, max=1e6, step=1.0, tooltip="0: to the end"),
                io.Combo.Input("unit", options=list(UNITS), default=UNITS[0]),
            ],
            outputs=[_features_output()],
        )

    @classmethod
    def execute(cls, motion_features: MotionFeatures, start: float, end: float, unit: str) -> io.NodeOutput:
        motion = _motion_of(motion_features, "Motion Trim")
        first, last = (edits.frame_at(f"{value!r}s", motion.fps) if unit == "seconds" else round(value) for value in (start, end))
        last = None if end == 0 else last
        return io.NodeOutput(_features_of(edits.trim(motion, first, last), motion_features))


class XPortrait2MotionLoop(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2MotionLoop",
            display_name="X-Portrait 2 Motion Loop",
            category=CATEGORY,
            description="Plays the motion again and again to a length: repeat (crossfaded seams) or ping-pong.",
            inputs=[
                _features_input(),
                io.Int.Input("frames", default=100, min=2, max=100000, tooltip="length of the looped motion"),
                io.Combo.Input("mode", options=list(edits.LOOP_MODES), default=edits.REPEAT),
                io.Int.Input("crossfade", default=edits.DEFAULT_CROSSFADE, min=0, max=100,
                             tooltip="repeat: frames blended at each seam"),
            ],
            outputs=[_features_output()],
        )

    @classmethod
    def execute(cls, motion_features: MotionFeatures, frames: int, mode: str, crossfade: int) -> io.NodeOutput:
        motion = edits.loop(_motion_of(motion_features, "Motion Loop"), frames, mode, crossfade)
        return io.NodeOutput(_features_of(motion, motion_features))


class XPortrait2MotionRetime(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2MotionRetime",
            display_name="X-Portrait 2 Motion Retime",
            category=CATEGORY,
            description="Another frame rate (same speed) and/or a speed factor, interpolating between frames.",
            inputs=[
                _features_input(),
                io.String.Input("frame_rate", default="", tooltip="empty: the motion's own; 25, 30000/1001, ..."),
                io.Float.Input("speed", default=1.0, min=0.01, max=100.0, step=0.05, tooltip="2: twice as fast"),
            ],
            outputs=[_features_output()],
        )

    @classmethod
    def execute(cls, motion_features: MotionFeatures, frame_rate: str, speed: float) -> io.NodeOutput:
        fps = parse_fps(frame_rate) if frame_rate.strip() else None
        motion = edits.retime(_motion_of(motion_features, "Motion Retime"), fps, Fraction(repr(speed)))
        return io.NodeOutput(_features_of(motion, motion_features))


class XPortrait2MotionJoin(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XPortrait2MotionJoin",
            display_name="X-Portrait 2 Motion Join",
            category=CATEGORY,
            description="The first motion, then the second (same frame rate), crossfaded at the seam.",
            inputs=[
                _features_input("first"),
                _features_input("second"),
                io.Int.Input("crossfade", default=edits.DEFAULT_CROSSFADE, min=0, max=100),
            ],
            outputs=[_features_output()],
        )

    @classmethod
    def execute(cls, first: MotionFeatures, second: MotionFeatures, crossfade: int) -> io.NodeOutput:
        joined = edits.join(_motion_of(first, "Motion Join"), _motion_of(second, "Motion Join"), crossfade)
        return io.NodeOutput(_features_of(joined, first))
