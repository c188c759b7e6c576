"""Progress reporting and stopping, the one seam long work goes through.

A progress callback is called as ``progress(stage, done, total)`` after each unit of work
(a batch of frames, a denoiser call, a decoded chunk); returning ``False`` (or raising) stops the
run at that point. ComfyUI's progress bar raises its own interrupt from inside the callback.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Callable[[str, int, int], Optional[bool]]


class Cancelled(RuntimeError):
    """The progress callback asked the run to stop."""


def report(progress: Optional[ProgressFn], stage: str, done: int, total: int) -> None:
    if progress is not None and progress(stage, done, total) is False:
        raise Cancelled(f"stopped during {stage} after {done} of {total}")


def progress_of_face(progress: Optional[ProgressFn], position: int, count: int) -> Optional[ProgressFn]:
    """The callback for the ``position``-th of ``count`` faces: with several faces its stages are
    named after the face ("face 2/3, sampling"), so each face gets its own bars."""
    if progress is None or count == 1:
        return progress
    return lambda stage, done, total: progress(f"face {position + 1}/{count}, {stage}", done, total)
