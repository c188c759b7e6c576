"""Context windows (spec section 5.3): how a long video is denoised 24 frames at a time.

At every step, windows of ``context_frames`` start every ``context_frames - overlap`` frames,
shifted by that step's offset and wrapped around the end of the video, so the whole video is
covered; frames seen by several windows are averaged. Positions inside a window are
window-relative (a wrapped window is treated as contiguous by the temporal modules).
"""

from __future__ import annotations

import torch


def context_windows(num_frames: int, context_frames: int, overlap: int, offset: int) -> list[list[int]]:
    """Frame indices of each window of one step (the official "uniform" schedule, stride 1, closed loop)."""
    if num_frames < 1:
        raise ValueError("no frames to animate")
    if not 0 <= overlap < context_frames:
        raise ValueError(f"context overlap must be in [0, {context_frames}), got {overlap}")
    if num_frames <= context_frames:
        return [list(range(num_frames))]
    hop = context_frames - overlap
    return [[(start + e + offset) % num_frames for e in range(context_frames)] for start in range(0, num_frames, hop)]


def window_offsets(generator: torch.Generator, num_steps: int, context_frames: int) -> list[int]:
    """One random offset in [0, context_frames) per step, from a seeded generator (the official
    code draws them from Python's unseeded ``random``, so its runs are not reproducible)."""
    return torch.randint(0, context_frames, (num_steps,), generator=generator).tolist()
