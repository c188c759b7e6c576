"""``xportrait2 motion``: a take's motion encoded once into a motion file, or a motion file edited.

The take is tracked as ``animate`` tracks it (the same face detector, performer choice and
``--max-frames``), so a file made here animates a portrait exactly as the take itself would. The
edits run in a fixed order: trim, retime, join, loop (chain commands for another order).
"""

from __future__ import annotations

import argparse
import logging
from fractions import Fraction
from pathlib import Path
from typing import Optional

from ..face_drives import parse_performer
from ..finished_files import check_output_folder
from ..media.driving_take import DrivingTake, track_take
from ..media.face_track import LARGEST_PERFORMER, plan_driving_crops
from ..progress import ProgressFn
from ..render_options import ProgressBars, UsageError, default_weights
from .drivers import motion_of_take
from .edits import DEFAULT_CROSSFADE, LOOP_MODES, REPEAT, frame_at, join, loop, retime, trim
from .file import Motion, is_motion_file, load_motion, parse_fps, save_motion

logger = logging.getLogger(__name__)


def add_motion_parser(commands) -> None:
    p = commands.add_parser(
        "motion", help="encode a take's motion once into a motion file (or edit one), to animate any portrait with it",
        description="Tracks the performer(s) of TAKE as animate does and saves their motion (no image of the "
                    "performer, no sound) in a .safetensors motion file; animate and batch take it wherever they "
                    "take a driving video. TAKE may be a motion file, to edit it. Edits run in this order: "
                    "--trim, --retime/--speed, --join, --loop.",
    )
    p.add_argument("take", help="driving video, or a motion file to edit")
    p.add_argument("-o", "--output", required=True, help="the motion file to write (e.g. take.motion.safetensors)")
    p.add_argument("--weights", default=str(default_weights()), help="weights folder (its motion encoder encodes the take)")
    p.add_argument("--performer", default=LARGEST_PERFORMER,
                   help="face(s) to follow in the take: largest (default), an index left to right at the first frame "
                        "with faces, or several indices such as 0,1 (stored in that order: performer i drives face i)")
    p.add_argument("--max-frames", type=int, help="encode at most this many frames of the take")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--face-detector", help="YuNet weights file (default: yunet_final.pth in the weights folder)")
    p.add_argument("--trim", metavar="START:END",
                   help="keep from START to END (END not kept); frames (12 or 12f) or seconds (1.5s); either may be empty")
    p.add_argument("--retime", metavar="FPS", help="another frame rate (25, 30000/1001, 29.97), the same speed")
    p.add_argument("--speed", metavar="X", help="play X times as fast (2: every other frame; 0.5: interpolated between frames)")
    p.add_argument("--join", metavar="OTHER", help="then this motion file (same encoder, frame rate and performers)")
    p.add_argument("--loop", metavar="LENGTH", help="play again and again to this length (frames, or seconds as 10s)")
    p.add_argument("--loop-mode", choices=LOOP_MODES, default=REPEAT, help="repeat (default) or pingpong")
    p.add_argument("--crossfade", type=int, default=DEFAULT_CROSSFADE,
                   help=f"frames blended at each --loop repeat seam and at the --join seam (default {DEFAULT_CROSSFADE})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing motion file")
    p.set_defaults(run=run_motion)


def _performers(text: str):
    items = [item for item in str(text).split(",") if item.strip()]
    choices = [parse_performer(item) for item in items]
    if not choices or "each" in choices or (len(choices) > 1 and LARGEST_PERFORMER in choices):
        raise UsageError(f"--performer takes largest, an index or indices such as 0,1, got {text!r}")
    return choices


def encode_take_file(args: argparse.Namespace, progress: Optional[ProgressFn]) -> Motion:
    """The take of ``args`` tracked and encoded (the models loaded here, only those needed)."""
    from ..animate import pick_device
    from ..media.face_detector import FaceDetectorRunner, find_yunet_weights
    from ..weights.loading import check_weight_files, load_motion_encoder

    performers = _performers(args.performer)
    take_path = Path(args.take)
    if not take_path.is_file():
        raise UsageError(f"{take_path} does not exist")
    weights = Path(args.weights)
    check_weight_files(weights)
    device = pick_device(args.device)
    take = DrivingTake.open(lambda: take_path, take_path.name, args.max_frames)
    detector = FaceDetectorRunner.from_weights(find_yunet_weights(Path(args.face_detector) if args.face_detector else None, [weights]), device=device)
    plans = [plan_driving_crops(track_take(take, detector, progress, performer)) for performer in performers]
    encoder = load_motion_encoder(weights, device)
    return motion_of_take(encoder, take, plans, progress)


def _open_input(args: argparse.Namespace, progress: Optional[ProgressFn]) -> Motion:
    if is_motion_file(args.take):
        if args.max_frames is not None or args.performer != LARGEST_PERFORMER:
            raise UsageError("--performer and --max-frames choose what to encode from a video: trim a motion file with --trim")
        return load_motion(Path(args.take))
    return encode_take_file(args, progress)


def edited(motion: Motion, args: argparse.Namespace) -> Motion:
    """``motion`` after the edits ``args`` asks for, in the documented order."""
    if args.trim is not None:
        start, colon, end = args.trim.partition(":")
        if not colon:
            raise UsageError(f"--trim takes START:END (e.g. 12:48, 0.5s:2s or 1s:), got {args.trim!r}")
        motion = trim(motion, frame_at(start, motion.fps) if start.strip() else 0,
                      frame_at(end, motion.fps) if end.strip() else None)
    if args.retime is not None or args.speed is not None:
        motion = retime(motion, parse_fps(args.retime) if args.retime else None, Fraction(args.speed) if args.speed else None)
    if args.join is not None:
        motion = join(motion, load_motion(Path(args.join)), args.crossfade)
    if args.loop is not None:
        motion = loop(motion, frame_at(args.loop, motion.fps), args.loop_mode, args.crossfade)
    return motion


def run_motion(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if not is_motion_file(output):
        raise UsageError(f"{output.name}: a motion file ends in .safetensors (e.g. take.motion.safetensors)")
    if output.is_dir():
        raise UsageError(f"{output} is a folder: -o names the motion file to write, e.g. {output / 'take.motion.safetensors'}")
    if output.exists() and not args.overwrite:
        raise UsageError(f"{output} already exists; pass --overwrite to replace it")
    if Path(args.take).resolve() == output.resolve():
        raise UsageError(f"{output} is also the input: write the motion to another file")
    check_output_folder(output)  # found now, not once the take has been tracked and encoded
    bars = ProgressBars()
    try:
        motion = edited(_open_input(args, bars), args)
    finally:
        bars.close()
    save_motion(motion, output, overwrite=args.overwrite)
    seconds = float(motion.seconds)
    print(f"wrote {output} ({len(motion.performers)} performer(s), {motion.frame_count} frames at {motion.fps} fps, {seconds:.2f} s)")
    return 0
