"""The ``xportrait2`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from .checkpoint import OFFICIAL_FILES, CheckpointError, convert_to_safetensors, read_state_dict

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "keep": None}


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


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
    dtype = DTYPES[args.dtype]
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
    return 0


def _check_round_trip(source: Path, target: Path, dtype: Optional[torch.dtype]) -> None:
    original, converted = read_state_dict(source), read_state_dict(target)
    for key, tensor in original.items():
        expected = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        if not torch.equal(converted[key], expected):
            target.unlink()
            raise CheckpointError(f"{target}: {key} did not survive the conversion; the file was removed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xportrait2", description="X-Portrait 2 (X-NeMo) portrait animation")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("convert", help="convert official .pth weights to .safetensors")
    p.add_argument("sources", nargs="+", help="official .pth files, or folders holding them")
    p.add_argument("-o", "--output", help="folder for the .safetensors files (default: beside each source)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="floating-point type to store (default fp16)")
    p.add_argument("--overwrite", action="store_true", help="replace existing .safetensors files")
    p.set_defaults(run=convert)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        print(f"xportrait2: {error}", file=sys.stderr)
        return 2
    except CheckpointError as error:
        print(f"xportrait2: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("xportrait2: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
