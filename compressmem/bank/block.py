"""`MemoryBlock`: one chunk of the context, compressed; `BlockInfo`: what the bank's index knows of it."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class BlockInfo:
    """Where a block's chunk came from and how big the block is, known without loading the block."""

    document: int  # index of the document in a list-of-text context (0 otherwise)
    token_start: int  # offset of the chunk's first token within its document
    char_span: tuple[int, int] | None  # the chunk's span in its document's text, when the context was text
    num_tokens: int  # tokens of the chunk
    num_entries: int  # KV entries kept per layer and head (0 for a bank of token ids only)

    def overlaps(self, spans: list[tuple[int, int]], document: int = 0) -> bool:
        """Whether this block's text overlaps any of the character `spans` of `document`."""
        return (self.document == document and self.char_span is not None
                and any(start < self.char_span[1] and self.char_span[0] < end for start, end in spans))


@dataclass(frozen=True)
class MemoryBlock:
    """One chunk of the context, compressed.

    `keys`/`values` are `[layers, kv_heads, m, head_dim]` for the bank's layers, with RoPE applied at
    the entries' original positions (the bank's shared prefix at `0..p-1`, the chunk at `p..p+n-1`),
    which `positions` `[layers, kv_heads, m]` records entry by entry. `keys` is None in a bank of
    token ids only, `values` when the bank was built for gating only. `token_ids` are the chunk's raw
    tokens, so a block can always be expanded back to its text.
    """

    token_ids: torch.Tensor
    keys: torch.Tensor | None
    values: torch.Tensor | None
    positions: torch.Tensor | None
    document: int
    token_start: int
    char_span: tuple[int, int] | None

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def num_entries(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    @property
    def info(self) -> BlockInfo:
        return BlockInfo(self.document, self.token_start, self.char_span, self.num_tokens, self.num_entries)

    @property
    def nbytes(self) -> int:
        """Bytes of the block as stored: its KV and positions, and its token ids at 4 bytes each."""
        return 4 * self.num_tokens + sum(_nbytes(t) for t in (self.keys, self.values, self.positions))

    def to(self, device: torch.device | str) -> "MemoryBlock":
        return replace(
            self,
            keys=None if self.keys is None else self.keys.to(device, non_blocking=True),
            values=None if self.values is None else self.values.to(device, non_blocking=True),
            positions=None if self.positions is None else self.positions.to(device, non_blocking=True),
        )


def _nbytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()
