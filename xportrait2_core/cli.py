"""The ``xportrait2`` command line."""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import signal
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

import torch

from .media.images import MediaError
from .motion.command import add_motion_parser
from .models.config import ConfigError
from .progress import Cancelled
from .render_options import ProgressBars, UsageError, add_render_options, default_weights, request_from_args
from .weights.checkpoint import MOTION_ENCODER, OFFICIAL_FILES, OFFICIAL_SOURCE, CheckpointError, convert_to_safetensors, read_state_dict
from .weights.loading import DTYPES, MOTION_ENCODER_CONFIG

STORED_DTYPES = {**DTYPES, "keep": None}
def _official_files_in(folder: Path) -> list[Path]:
    found = [folder / f"{name}.pth" for name in OFFICIAL_FILES if (folder / f"{name}.pth").is_file()]
    if not found:
        raise UsageError(f"{folder} holds none of the official files ({', '.join(n + '.pth' for n in OFFICIAL_FILES)})")
    return found


def convert(args: argparse.Namespace) -> int:
    sources: list[Path] = []
    for item in args.sources:
        path = Path(item)
        sources.extend(_official_files_in(path) if path.is_dir() else [path])
    dtype = STORED_DTYPES[args.dtype]
    for source in sources:
        target_dir = Path(args.output) if args.output else source.parent
        if not target_dir.is_dir():
            raise UsageError(f"output folder {target_dir} does not exist")
        target = target_dir / f"{source.stem}.safetensors"
        if target.exists() and not args.overwrite:
            raise UsageError(f"{target} exists; pass --overwrite to replace it")
        convert_to_safetensors(source, target, dtype)
        _check_round_trip(source, target, dtype)
        print(f"{source} -> {target} ({args.dtype})")
        architecture = source.with_name(MOTION_ENCODER_CONFIG)
        if source.stem == MOTION_ENCODER and architecture.is_file() and target_dir.resolve() != source.parent.resolve():
            shutil.copyfile(architecture, target_dir / MOTION_ENCODER_CONFIG)  # it describes the converted file too
    return 0


def _check_round_trip(source: Path, target: Path, dtype: Optional[torch.dtype]) -> None:
    original, converted = read_state_dict(source), read_state_dict(target)
    for key, tensor in original.items():
        expected = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        if not torch.equal(converted[key], expected):
            target.unlink()
            raise CheckpointError(f"{target}: {key} did not survive the conversion; the file was removed")


def animate(args: argparse.Namespace) -> int:
    from .animate import animate_files

    if not args.driving and not args.more_driving and not args.drive:
        raise UsageError("give a driving video (or --drive FACE=VIDEO)")
    driving = [args.driving] if args.driving else []
    request = request_from_args(args, args.source, driving + args.more_driving, args.output)
    if args.ray is not None:
        from .farm_cli import animate_on_ray

        return animate_on_ray(args, request, ProgressBars())
    if args.workers is not None:
        raise UsageError("--workers shares a take's windows among Ray workers: give it with --ray")
    bars = ProgressBars()
    try:
        output = animate_files(request, progress=bars)
    finally:
        bars.close()
    print(f"wrote {output}")
    return 0


def doctor(args: argparse.Namespace) -> int:
    from .media.face_detector import find_yunet_weights
    from .weights.checkpoint import find_weight_file
    from .weights.standalone_models import CLIP_IMAGE_ENCODER, SVD_VAE, PretrainedModelMissing, locate

    weights = Path(args.weights)
    print(f"python {platform.python_version()} on {platform.platform()}")
    for package in ("torch", "diffusers", "transformers", "kornia", "av", "safetensors", "huggingface_hub"):
        try:
            print(f"  {package:16} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            print(f"  {package:16} MISSING (pip install {package})")
    if torch.cuda.is_available():
        print(f"device: cuda ({torch.cuda.get_device_name(0)}), dtype fp16")
    else:
        print("device: cpu (no CUDA GPU visible), dtype fp32")
    print(f"weights folder: {weights.resolve()}" + ("" if weights.is_dir() else "  (does not exist)"))
    problems = 0
    for name in OFFICIAL_FILES:
        try:
            found = find_weight_file(weights, name)
            print(f"  ok       {found}  ({found.stat().st_size / 2**20:.1f} MiB)")
        except CheckpointError:
            problems += 1
            print(f"  MISSING  {name}.pth (or {name}.safetensors) in {weights}")
    if problems:  # where to get them, said once for all the missing files
        print(f"           {OFFICIAL_SOURCE}")
    if (weights / MOTION_ENCODER_CONFIG).is_file():
        print(f"  note     {weights / MOTION_ENCODER_CONFIG}: describes a motion encoder narrower than the official one (test weights)")
    for part in (CLIP_IMAGE_ENCODER, SVD_VAE):
        try:
            print(f"  ok       {part.repo_id} {part.subfolder}: {locate(part, weights, allow_download=False)}")
        except PretrainedModelMissing as error:
            problems += 1
            print(f"  MISSING  {error}")
    try:
        print(f"  ok       face detector: {find_yunet_weights(None, [weights])}")
    except CheckpointError as error:
        problems += 1
        print(f"  MISSING  {error}")
    print("everything needed is in place" if not problems else f"{problems} item(s) missing")
    return 0 if not problems else 1


def demo(args: argparse.Namespace) -> int:
    from .animate import animate_files
    from .demo import plan_demo
    from .media.video_reader import probe_video

    plan = plan_demo(Path(args.output) if args.output else None, Path(args.weights) if args.weights else None,
                     default_weights(), args.overwrite)
    print(f"xportrait2 demo: the sample portrait and take shipped with the package, animated with {plan.weights_note}")
    bars = ProgressBars()
    try:
        output = animate_files(plan.request, progress=bars)
    finally:
        bars.close()
        plan.remove_scratch()
    info = probe_video(output)
    print(f"wrote {output} ({info.frame_count} frames at {float(info.fps):g} fps, {info.width}x{info.height})")
    return 0


def faces(args: argparse.Namespace) -> int:
    from .media.face_detector import FaceDetectorRunner, detect_faces, find_yunet_weights
    from .media.images import load_image
    from .media.portrait_faces import describe_faces

    detector = FaceDetectorRunner.from_weights(find_yunet_weights(args.face_detector, [Path(args.weights)]))
    source = Path(args.source)
    for line in describe_faces(detect_faces(load_image(source), detector, source.name)):
        print(line)
    return 0


def tiny_weights(args: argparse.Namespace) -> int:
    from .testing.tiny_weights import write_tiny_weights

    folder = Path(args.folder)
    if folder.exists() and any(folder.iterdir()) and not args.overwrite:
        raise UsageError(f"{folder} is not empty; pass --overwrite to write into it")
    write_tiny_weights(folder, seed=args.seed)
    print(f"wrote tiny RANDOM weights (for testing only, they animate nothing meaningful) to {folder}")
    return 0


def add_ray_options(p: argparse.ArgumentParser, workers_help: str) -> None:
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray (pip install '.[farm]'): 'auto', a cluster address, or nothing for a new "
                        "Ray on this computer; write it after the positional arguments or as --ray=ADDRESS")
    p.add_argument("--workers", type=int, help=workers_help)


def batch(args: argparse.Namespace) -> int:
    from .farm_cli import batch as run_batch

    return run_batch(args)


def add_batch_parser(commands) -> None:
    p = commands.add_parser("batch", help="animate many clips: a manifest (CSV/JSONL) or two folders",
                            description="Jobs from a manifest (.csv with a header row, or .jsonl), one a row: "
                                        "portrait, driving, output, and optionally seed, steps, guidance, size, "
                                        "max_frames, paste_back, faces, performer; or PORTRAITS_DIR DRIVING_DIR -o OUT_DIR. "
                                        "Each finished video gets a record of what made it beside it (VIDEO.xportrait2.json): running it "
                                        "again skips the videos made exactly so and completes the batch.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="a manifest, or PORTRAITS_DIR DRIVING_DIR")
    p.add_argument("-o", "--output", help="output folder (with two folders as input)")
    p.add_argument("--pairs", choices=["all", "zip"], default="all",
                   help="with two folders: every portrait with every video (all), or the n-th with the n-th (zip)")
    p.add_argument("--report", help="JSON report (default: beside the manifest, or in the output folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="render every job again, replacing outputs that exist (without it finished videos are "
                        "skipped, those made with other settings, inputs or weights made again, and any other "
                        "file in an output's place fails its job)")
    add_render_options(p)
    add_ray_options(p, workers_help="Ray workers, one job each at a time (default: one per GPU, or per CPU on a "
                    "cluster without GPUs)")
    p.add_argument("--attempts", type=int, default=3,
                   help="with --ray: runs of a job whose worker died before it counts as failed (default 3)")
    p.set_defaults(run=batch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xportrait2", description="X-Portrait 2 (X-NeMo) portrait animation")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("convert", help="convert official .pth weights to .safetensors")
    p.add_argument("sources", nargs="+", help="official .pth files, or folders holding them")
    p.add_argument("-o", "--output", help="folder for the .safetensors files (default: beside each source)")
    p.add_argument("--dtype", choices=sorted(STORED_DTYPES), default="fp16", help="floating-point type to store (default fp16)")
    p.add_argument("--overwrite", action="store_true", help="replace existing .safetensors files")
    p.set_defaults(run=convert)

    p = commands.add_parser("animate", help="animate a portrait with a driving video")
    p.add_argument("source", help="portrait image (PNG/JPEG/WebP)")
    p.add_argument("driving", nargs="?", help="driving video (its frame rate and audio are kept), or a motion file "
                   "(xportrait2 motion; its frame rate is kept, the sound comes from --audio-from)")
    p.add_argument("-o", "--output", required=True, help="output .mp4")
    add_render_options(p)
    p.add_argument("--driving", dest="more_driving", action="append", default=[], metavar="VIDEO",
                   help="another driving video; repeat it for one video per chosen face, in order")
    p.add_argument("--drive", nargs="+", default=[], metavar="FACE=VIDEO[:PERFORMER]",
                   help="drive each face explicitly, e.g. --drive 0=a.mp4 1=b.mp4:1 (replaces the driving video and --faces)")
    p.add_argument("--hold-last-frame", action="store_true",
                   help="with several driving videos, last as long as the longest (default: the shortest)")
    p.add_argument("--audio-from", metavar="VIDEO", help="take the sound from this video (default: the first driving video)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_ray_options(p, workers_help="Ray workers sharing each sampling step's windows (default: one per GPU, "
                    "or per CPU on a cluster without GPUs); the video equals the one-process video")
    p.set_defaults(run=animate)

    p = commands.add_parser("demo", help="animate the sample portrait shipped with the package: a first video, offline",
                            description="Animates the sample portrait with the sample take shipped in the package, "
                                        "offline. With the X-NeMo weights (--weights, $XPORTRAIT2_WEIGHTS or "
                                        "./pretrained_weights) at the official settings; without them with tiny random "
                                        "weights kept in the cache folder (a noise-like video that proves the install).")
    p.add_argument("-o", "--output", help="the MP4 to write; refused if it exists, unless --overwrite (default: demo.mp4 here, or demo-1.mp4, ... if taken)")
    p.add_argument("--weights", help="folder of the X-NeMo weights (default: $XPORTRAIT2_WEIGHTS or ./pretrained_weights if it holds them)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.set_defaults(run=demo)

    p = commands.add_parser("faces", help="list the faces of a portrait, numbered left to right, with their boxes")
    p.add_argument("source", help="portrait image")
    p.add_argument("--weights", default=str(default_weights()), help="weights folder holding yunet_final.pth")
    p.add_argument("--face-detector", help="YuNet weights file")
    p.set_defaults(run=faces)

    add_batch_parser(commands)
    add_motion_parser(commands)

    p = commands.add_parser("doctor", help="show what is installed and which weights are found where")
    p.add_argument("--weights", default=str(default_weights()), help="weights folder to inspect")
    p.set_defaults(run=doctor)

    p = commands.add_parser("tiny-weights", help="TESTING ONLY: write tiny random weights in the official layout")
    p.add_argument("folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=tiny_weights)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was when the handler was
    made: a caller that swaps stderr between calls of :func:`main` (a notebook, a test's capture)
    would otherwise get the later messages written to a closed stream."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, ``kill``, a closing container), raised where Ctrl-C would be so
    that the same clean-up runs: no partial file is left behind."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    package_logger = logging.getLogger("xportrait2_core")
    if not package_logger.handlers:
        package_logger.addHandler(_StderrHandler())
        package_logger.setLevel(logging.INFO)
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals reach only that one
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return args.run(args)
    except UsageError as error:
        print(f"xportrait2: {error}", file=sys.stderr)
        return 2
    except (CheckpointError, ConfigError, MediaError, FileNotFoundError, ValueError, Cancelled) as error:
        print(f"xportrait2: {error}", file=sys.stderr)
        return 1
    except Terminated:
        print("xportrait2: terminated (SIGTERM); no partial output was left", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("xportrait2: interrupted; no output was written", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    sys.exit(main())
