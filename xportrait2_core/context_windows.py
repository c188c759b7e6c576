"""Context windows (spec section 5.3): how a long video is denoised 24 frames at a time.

At every step, windows of ``context_frames`` start every ``context_frames - overlap`` frames,
shifted by that step's offset and wrapped around the end of the video, so the whole video is
covered; frames seen by several windows are averaged. Positions inside a window are
window-relative (a wrapped window is treated as contiguous by the temporal modules).
"""

from __future__ import annotations

from collections.abc import Iterator

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
    """The random offsets in [0, context_frames) of the next ``num_steps`` steps, drawn one step at
    a time from a seeded generator, as a sampler that asks step by step draws them (the official
    code draws them from Python's unseeded ``random``, so its runs are not reproducible)."""
    return [int(torch.randint(0, context_frames, (1,), generator=generator)) for _ in range(num_steps)]


class SeededWindowOffsets:
    """The window offset of every step of a run with this seed, one per ``next``: the engine takes
    as many as it has steps, ComfyUI's guider one per model call."""

    def __init__(self, seed: int, context_frames: int):
        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.context_frames = context_frames

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        return window_offsets(self.generator, 1, self.context_frames)[0]
