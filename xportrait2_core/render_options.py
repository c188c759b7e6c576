"""What ``animate`` and ``batch`` share on the command line: the render options, the request they
make, one progress bar per stage, and the error for bad command-line input. ``cli`` hands
``batch`` and ``animate --ray`` to ``farm_cli``; both take these from here, so that the
dependency runs one way."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from .weights.loading import DTYPES

WEIGHTS_ENV = "XPORTRAIT2_WEIGHTS"
SWITCHES = {"auto": None, "on": True, "off": False}  # a setting that is automatic unless given
STAGE_NAMES = {
    "detecting faces": "frames",
    "encoding motion": "frames",
    "sampling": "denoiser calls",
    "decoding": "frames",
}


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class ProgressBars:
    """One tqdm bar per stage of the engine's progress callback."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            # A face's stages are named "face 2/3, sampling"; the unit is that of the stage.
            unit = STAGE_NAMES.get(stage.rpartition(", ")[2], "steps")
            bar = self._bars[stage] = self._tqdm(total=total, desc=stage, unit=" " + unit)
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def default_weights() -> Path:
    return Path(os.environ.get(WEIGHTS_ENV, "pretrained_weights"))


def request_from_args(args: argparse.Namespace, source: str, driving: Sequence[str], output: str):
    """The render settings of ``animate``/``batch`` (see :func:`add_render_options`) as a request;
    ``driving``: the driving videos, one for all faces or one per chosen face."""
    from .animate import AnimateRequest
    from .face_drives import parse_drive_mapping, parse_performer
    from .low_vram import LowVramSettings
    from .sampling import SamplingSettings

    videos = [Path(video) for video in driving]
    audio_from = getattr(args, "audio_from", None)
    return AnimateRequest(
        source=Path(source),
        driving=videos[0] if videos else None,
        more_driving=tuple(videos[1:]),
        faces=args.faces,
        performer=parse_performer(args.performer),
        drive_mapping=tuple(parse_drive_mapping(item) for item in getattr(args, "drive", ())),
        blend=args.blend,
        hold_last_frame=getattr(args, "hold_last_frame", False),
        audio_from=Path(audio_from) if audio_from else None,
        output=Path(output),
        weights=Path(args.weights),
        seed=args.seed,
        settings=SamplingSettings(args.steps, args.guidance, args.context_frames, args.context_overlap),
        size=args.size,
        max_frames=args.max_frames,
        paste_back=not args.no_paste_back,
        device=args.device,
        dtype=None if args.dtype == "auto" else DTYPES[args.dtype],
        face_detector=Path(args.face_detector) if args.face_detector else None,
        allow_download=not args.offline,
        overwrite=getattr(args, "overwrite", False),
        compile=args.compile,
        fast=args.fast,
        low_vram=LowVramSettings(SWITCHES[args.offload], SWITCHES[args.guidance_in_sequence]),
    )


def add_render_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=str(default_weights()),
                   help=f"weights folder (default: ${WEIGHTS_ENV} or ./pretrained_weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=35)
    p.add_argument("--guidance", type=float, default=2.5)
    p.add_argument("--context-frames", type=int, default=24)
    p.add_argument("--context-overlap", type=int, default=4)
    p.add_argument("--size", type=int, default=512, help="side of the generated square, multiple of 64 (official: 512)")
    p.add_argument("--max-frames", type=int, help="animate at most this many driving frames")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                   help="auto: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--no-paste-back", action="store_true", help="write the generated square crop, not the whole picture")
    p.add_argument("--faces", default="largest",
                   help="portrait faces to animate: largest (default), all, or indices such as 0,2 (left to right)")
    p.add_argument("--performer", default="largest",
                   help="face to follow in the driving video: largest (default), an index left to right at the "
                        "first frame with faces, or each (performer i drives face i)")
    p.add_argument("--blend", choices=["head", "rectangle"], default="head",
                   help="paste-back: head (feathered ellipse around the head, colour-matched; default) or "
                        "rectangle (the whole square with a feathered border)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the denoiser: about 1.3x faster sampling on a GPU, same output; "
                        "the first run compiles for about 2 minutes (cached on disk for later runs)")
    p.add_argument("--fast", action="store_true",
                   help="the fused Triton kernels in the denoiser (GEGLU, residual + LayerNorm, temporal layout + "
                        "LayerNorm, GroupNorm + SiLU): CUDA GPUs with Triton only; output within fp16 rounding of "
                        "the plain path, not yet timed on a GPU")
    p.add_argument("--offload", choices=list(SWITCHES), default="auto",
                   help="move the reference UNet and motion encoder to host memory once done, leaving the GPU "
                        "to the denoiser (auto: on CUDA; same output)")
    p.add_argument("--guidance-in-sequence", choices=list(SWITCHES), default="auto",
                   help="run the two guidance branches one after the other: half the denoiser's activations, "
                        "slower (auto: when free GPU memory is short; same output within rounding)")
    p.add_argument("--face-detector", help="YuNet weights file (default: yunet_final.pth in the weights folder or kornia's cache)")
    p.add_argument("--offline", action="store_true", help="never download the CLIP/VAE models")
