"""Reference attention (spec section 4): how the source image's appearance reaches the denoiser.

Write once: the reference UNet runs once on the clean source latent (timestep 0) and every
spatial transformer block records its ``norm1`` output, its *bank*. Read many: the denoiser's
block at the same module path lets the frames' self-attention also attend to that bank. The
bank is turned into keys/values once (:func:`reference_keys_values`) and reused by every window
and step, and only the guidance rows that use the reference (the conditional branch) pay for it:
the unconditional rows do plain self-attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from .attention import Attention

# The official code stores every bank in float16, whatever precision the run uses.
BANK_DTYPE = torch.float16


class BankRecorder:
    """Writer side: collects each block's ``norm1`` output under the block's module path."""

    def __init__(self) -> None:
        self.banks: dict[str, torch.Tensor] = {}

    def record(self, block_path: str, normed: torch.Tensor) -> None:
        if block_path in self.banks:
            raise RuntimeError(f"reference bank of {block_path} written twice in one pass")
        self.banks[block_path] = normed


@dataclass(frozen=True)
class ReferenceKeysValues:
    """Reader side: per block path, keys and values (1, tokens, inner) of the reference bank."""

    by_block: Mapping[str, tuple[torch.Tensor, torch.Tensor]]

    def to(self, device=None, dtype=None) -> "ReferenceKeysValues":
        return ReferenceKeysValues(
            {p: (k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype)) for p, (k, v) in self.by_block.items()}
        )


@dataclass(frozen=True)
class ReferenceRead:
    """What a denoiser call needs: the keys/values and which batch elements attend to them."""

    keys_values: ReferenceKeysValues
    rows: tuple[bool, ...]


def reference_keys_values(
    banks: Mapping[str, torch.Tensor], reader_blocks: Mapping[str, nn.Module], row: int = -1
) -> ReferenceKeysValues:
    """Project each bank (row ``row`` of its batch; the writer's conditional row by default)
    through the reader block's own ``attn1.to_k``/``to_v``, once."""
    missing = set(reader_blocks) - set(banks)
    extra = set(banks) - set(reader_blocks)
    if missing or extra:
        raise ValueError(
            f"reference banks do not match the denoiser's blocks: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    by_block = {}
    for path, block in reader_blocks.items():
        attn1: Attention = block.attn1
        bank = banks[path][row].unsqueeze(0).to(BANK_DTYPE).to(attn1.to_k.weight.dtype)
        by_block[path] = (attn1.to_k(bank), attn1.to_v(bank))
    return ReferenceKeysValues(by_block)


def _runs(rows: Sequence[bool], frames: int) -> Iterator[tuple[int, int, bool]]:
    """Consecutive (start, stop, uses_reference) ranges of the folded (batch * frames) axis."""
    start = 0
    for index in range(1, len(rows) + 1):
        if index == len(rows) or rows[index] != rows[start]:
            yield start * frames, index * frames, rows[start]
            start = index


def self_attention_with_reference(
    attn1: Attention,
    normed: torch.Tensor,
    frames: int,
    reference: tuple[torch.Tensor, torch.Tensor] | None,
    rows: Sequence[bool],
) -> torch.Tensor:
    """attn1 of a denoiser block: keys/values are concat[frame tokens, reference tokens] for the
    rows that use the reference, the frame tokens alone for the others."""
    if reference is None or not any(rows):
        return attn1(normed)
    q, k, v = attn1.to_q(normed), attn1.to_k(normed), attn1.to_v(normed)
    ref_k, ref_v = reference
    outputs = []
    for start, stop, uses_reference in _runs(rows, frames):
        qs, ks, vs = q[start:stop], k[start:stop], v[start:stop]
        if uses_reference:
            count = stop - start
            ks = torch.cat([ks, ref_k.expand(count, -1, -1)], dim=1)
            vs = torch.cat([vs, ref_v.expand(count, -1, -1)], dim=1)
        outputs.append(attn1.attention(qs, ks, vs, attn1.heads))
    return attn1.to_out[0](torch.cat(outputs))
