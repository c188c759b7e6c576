"""``xportrait2 demo``: a first video on any machine, offline, from the package alone.

It animates the sample portrait with the sample take shipped in ``media/samples`` (see the
NOTICE there). With the X-NeMo weights (``--weights``, ``$XPORTRAIT2_WEIGHTS`` or
``./pretrained_weights``) it renders at the official settings: a real first result. Without them
it renders with tiny random weights, written once to the user's cache folder and reused (where that
cannot be written, to a temporary folder removed after the run), at a small size: that proves the installation end to end in about a minute on a CPU, and the video is
noise-like, since random networks animate nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .animate import AnimateRequest
from .sampling import SamplingSettings
from .testing.tiny_weights import write_tiny_weights
from .weights.checkpoint import CheckpointError
from .weights.loading import WeightFiles

SAMPLES = Path(__file__).resolve().parent / "media" / "samples"
SAMPLE_PORTRAIT = SAMPLES / "portrait.png"
SAMPLE_TAKE = SAMPLES / "driving.mp4"
SAMPLE_FACE_DETECTOR = SAMPLES / "yunet_final.pth"
DEFAULT_OUTPUT = Path("demo.mp4")
# Tiny random weights show nothing at any size: render small and fast.
TINY_SIZE = 64
TINY_STEPS = 2


@dataclass(frozen=True)
class DemoPlan:
    request: AnimateRequest
    tiny: bool  # rendering with tiny random weights
    weights_note: str  # what is used, for the user
    scratch: Optional[Path] = None  # a temporary folder of tiny weights, to remove after the run

    def remove_scratch(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def cache_folder() -> Path:
    """The user's cache folder for this package (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xportrait2"


def tiny_weights_in_cache() -> Path:
    """Tiny random weights in the cache folder, written the first time (to a temporary folder
    renamed when complete, so an interrupted first run leaves nothing half written)."""
    folder = cache_folder() / "tiny-weights"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".tiny-weights.", dir=folder.parent))
    try:
        write_tiny_weights(partial)
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def tiny_weights_for_this_run() -> tuple[Path, Optional[Path], Optional[str]]:
    """The cached tiny weights: (folder, None, None); or, where the cache folder cannot be written
    (a read-only home, a full disk), a temporary folder of them: (folder, folder to remove, why)."""
    try:
        return tiny_weights_in_cache(), None, None
    except OSError as error:
        why = f"the cache folder {cache_folder()} cannot be written ({error.strerror or error})"
    try:
        scratch = Path(tempfile.mkdtemp(prefix="xportrait2-tiny-weights-"))
    except OSError as error:
        raise CheckpointError(f"no folder to write the demo's tiny weights to: {why}, nor {tempfile.gettempdir()} "
                              f"({error.strerror or error}); set XDG_CACHE_HOME to a folder that can be written") from None
    try:
        write_tiny_weights(scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return scratch, scratch, why


def has_xnemo_weights(folder: Path) -> bool:
    try:
        WeightFiles.discover(folder)
    except CheckpointError:
        return False
    return True


def free_name(path: Path) -> Path:
    """``path``, or the first of ``demo-1.mp4``, ``demo-2.mp4``, ... beside it that does not exist."""
    candidate, number = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


def plan_demo(output: Optional[Path], weights: Optional[Path], default_weights: Path, overwrite: bool) -> DemoPlan:
    """What ``xportrait2 demo`` renders: the sample portrait and take, with the X-NeMo weights of
    ``weights`` (which must hold them) or of ``default_weights`` if it does, else tiny weights;
    into ``output``, which, as with ``animate``, is refused if it exists unless ``overwrite``; without
    ``output``, into ``demo.mp4``, or the first free name beside it unless ``overwrite``."""
    if weights is not None:
        WeightFiles.discover(weights)  # asked for: a missing file is an error that says which and where to get it
        folder: Optional[Path] = weights
    else:
        folder = default_weights if has_xnemo_weights(default_weights) else None
    target = output or (DEFAULT_OUTPUT if overwrite else free_name(DEFAULT_OUTPUT))
    common = dict(
        source=SAMPLE_PORTRAIT, driving=SAMPLE_TAKE, output=target, face_detector=SAMPLE_FACE_DETECTOR,
        allow_download=False, overwrite=overwrite,
    )
    if folder is not None:
        return DemoPlan(AnimateRequest(weights=folder, **common), False, f"X-NeMo weights in {folder}")
    tiny, scratch, why = tiny_weights_for_this_run()
    request = AnimateRequest(weights=tiny, size=TINY_SIZE, settings=SamplingSettings(steps=TINY_STEPS), **common)
    where = f"; {why}, so they are written for this run only" if why else ""
    note = (
        f"tiny RANDOM weights in {tiny} (no X-NeMo weights in {default_weights}{where}): the video will be noise-like, "
        "since random networks animate nothing; it proves the installation. For a real result put the official "
        "weights there or pass --weights (see the README, Weights)"
    )
    return DemoPlan(request, True, note, scratch)
