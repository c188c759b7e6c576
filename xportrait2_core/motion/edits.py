"""Edits in time on a motion, before the identity filter: trim, loop, retime and join.

Small pure functions on ``(F, D)`` per-frame features (:func:`trim_frames`, :func:`loop_frames`,
:func:`resample_frames`, :func:`join_frames`), and their :class:`~.file.Motion` forms, which apply
one edit to every performer alike and keep the frame rate exact (``Fraction``). A frame that an
edit takes whole is copied bit for bit; only crossfades and retimes between frames blend.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from .file import MIN_FRAMES, Motion

REPEAT = "repeat"
PINGPONG = "pingpong"
LOOP_MODES = (REPEAT, PINGPONG)
DEFAULT_CROSSFADE = 4  # frames: about a sixth of a second at 25 fps, short enough to keep the motion


class EditError(ValueError):
    """An edit that cannot be made (the command line prints it as one line)."""


# ----------------------------------------------------------------------------- times and counts


def frame_at(text: str | int, fps: Fraction) -> int:
    """A time as a frame index: ``"12"`` or ``"12f"`` frames, ``"1.5s"`` seconds (the nearest
    frame, halves rounded up, computed exactly)."""
    cleaned = str(text).strip().lower()
    try:
        if cleaned.endswith("s"):
            return math.floor(Fraction(cleaned[:-1]) * fps + Fraction(1, 2))
        return int(cleaned[:-1] if cleaned.endswith("f") else cleaned)
    except (ValueError, ZeroDivisionError):
        raise EditError(f"a time is frames (12 or 12f) or seconds (1.5s), got {text!r}") from None


def _check_length(frames: int, what: str) -> None:
    if frames < MIN_FRAMES:
        raise EditError(f"{what} leaves {frames} frame(s): a motion needs at least {MIN_FRAMES}")


def _fade_weights(count: int, like: torch.Tensor) -> torch.Tensor:
    """Weights of the incoming frames across a crossfade of ``count`` frames, strictly between 0
    and 1 (``1/(n+1) ... n/(n+1)``), as a column to broadcast over the features."""
    steps = torch.arange(1, count + 1, dtype=torch.float64) / (count + 1)
    return steps.to(like.dtype).unsqueeze(1)


# ----------------------------------------------------------------------------- on (F, D) frames


def trim_frames(frames: torch.Tensor, start: int, end: int | None = None) -> torch.Tensor:
    """Frames ``start`` (kept) to ``end`` (not kept; None: the last frame included)."""
    count = len(frames)
    end = count if end is None else end
    if not 0 <= start < count:
        raise EditError(f"trim start {start} is outside the motion's {count} frames (0 to {count - 1})")
    if not start < end <= count:
        raise EditError(f"trim end {end} must be after the start ({start}) and at most the frame count ({count})")
    _check_length(end - start, f"trimming to frames {start}..{end}")
    return frames[start:end].clone()


def join_frames(first: torch.Tensor, second: torch.Tensor, crossfade: int = 0) -> torch.Tensor:
    """``first`` then ``second``, the last ``crossfade`` frames of the first blended into the first
    ``crossfade`` of the second (``len(first) + len(second) - crossfade`` frames)."""
    if crossfade < 0 or crossfade >= min(len(first), len(second)):
        raise EditError(
            f"a crossfade of {crossfade} frames needs both motions longer than it "
            f"({len(first)} and {len(second)} frames)"
        )
    if crossfade == 0:
        return torch.cat([first, second])
    weights = _fade_weights(crossfade, first)
    seam = first[-crossfade:] * (1 - weights) + second[:crossfade] * weights
    return torch.cat([first[:-crossfade], seam, second[crossfade:]])


def loop_frames(frames: torch.Tensor, length: int, mode: str = REPEAT, crossfade: int = DEFAULT_CROSSFADE) -> torch.Tensor:
    """The motion played again and again to ``length`` frames.

    ``repeat``: each pass starts ``len - crossfade`` frames after the last one began, its first
    ``crossfade`` frames blended with the end of the pass before (a seam without a jump);
    ``pingpong``: forwards, backwards, forwards... without showing a turning frame twice (there
    the motion meets itself, so there is no jump to hide and no crossfade)."""
    if mode not in LOOP_MODES:
        raise EditError(f"loop mode must be one of {', '.join(LOOP_MODES)}, got {mode!r}")
    _check_length(length, f"a loop of {length} frames")
    count = len(frames)
    if mode == PINGPONG:
        cycle = torch.cat([frames, frames.flip(0)[1:-1]]) if count > 2 else frames
        passes = [cycle] * math.ceil(length / len(cycle))
        return torch.cat(passes)[:length].clone()
    looped = frames
    while len(looped) < length:
        looped = join_frames(looped, frames, crossfade)
    return looped[:length].clone()


def resample_frames(frames: torch.Tensor, step: Fraction) -> torch.Tensor:
    """Frames at source positions ``0, step, 2 step, ...`` up to the last frame, each between two
    source frames linearly interpolated (at a whole position the source frame itself)."""
    if step <= 0:
        raise EditError(f"a retime step must be positive, got {step}")
    last = len(frames) - 1
    count = math.floor(last / step) + 1
    _check_length(count, f"retiming by a step of {step} source frames")
    out = []
    for index in range(count):
        position = index * step
        below = math.floor(position)
        weight = position - below
        if weight == 0:
            out.append(frames[below])
        else:
            out.append(torch.lerp(frames[below], frames[below + 1], float(weight)))
    return torch.stack(out)


# ----------------------------------------------------------------------------- on motions


def trim(motion: Motion, start: int, end: int | None = None) -> Motion:
    performers = [trim_frames(features, start, end) for features in motion.performers]
    end = motion.frame_count if end is None else end
    return motion.with_performers(performers, step=f"trim frames {start}:{end}")


def loop(motion: Motion, length: int, mode: str = REPEAT, crossfade: int = DEFAULT_CROSSFADE) -> Motion:
    performers = [loop_frames(features, length, mode, crossfade) for features in motion.performers]
    fade = f", crossfade {crossfade}" if mode == REPEAT else ""
    return motion.with_performers(performers, step=f"loop to {length} frames ({mode}{fade})")


def retime(motion: Motion, fps: Fraction | None = None, speed: Fraction | None = None) -> Motion:
    """Played ``speed`` times as fast, at ``fps`` (default: the motion's): a source frame every
    ``speed * motion.fps / fps`` output frames' worth, interpolated between frames."""
    if fps is None and speed is None:
        raise EditError("retime needs a frame rate, a speed or both")
    speed = Fraction(1) if speed is None else Fraction(speed)
    fps = motion.fps if fps is None else Fraction(fps)
    if speed <= 0 or fps <= 0:
        raise EditError(f"speed and frame rate must be positive, got speed {speed} and {fps} fps")
    step = speed * motion.fps / fps
    performers = [resample_frames(features, step) for features in motion.performers]
    return motion.with_performers(performers, fps=fps, step=f"retime to {fps} fps at speed {speed}")


def join(first: Motion, second: Motion, crossfade: int = 0) -> Motion:
    """``first`` then ``second`` (same encoder, frame rate and performers)."""
    if first.encoder != second.encoder:
        raise EditError("the two motions were made by different motion encoders: they cannot be joined")
    if first.fps != second.fps:
        raise EditError(
            f"the motions run at {first.fps} and {second.fps} fps: retime one to the other's rate before joining"
        )
    if len(first.performers) != len(second.performers):
        raise EditError(
            f"the motions hold {len(first.performers)} and {len(second.performers)} performers: join motions of as many"
        )
    performers = [join_frames(a, b, crossfade) for a, b in zip(first.performers, second.performers)]
    step = f"join {second.frame_count} frames ({'; '.join(second.history) or 'another motion'}), crossfade {crossfade}"
    return first.with_performers(performers, step=step)
