"""`MemoryBlock`: one chunk of the context, compressed; `BlockInfo`: what the bank's index knows of it;
`BlockTable`: every block's info as one tensor, so that a bank of millions of tokens opens in milliseconds."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import overload

import torch

from ..quantize import Quantized


@dataclass(frozen=True)
class BlockInfo:
    """Where a block's chunk came from and how big the block is, known without loading the block."""

    document: int  # index of the document in a list-of-text context (0 otherwise)
    token_start: int  # offset of the chunk's first token within its document
    char_span: tuple[int, int] | None  # the chunk's span in its document's text, when the context was text
    num_tokens: int  # tokens of the chunk
    num_entries: int  # KV entries kept per layer and head (0 for a bank of token ids only)
    num_bytes: int  # the block as stored: KV (packed, with scales, when quantized), positions, token ids


@dataclass(frozen=True)
class MemoryBlock:
    """One chunk of the context, compressed.

    `keys`/`values` are `[layers, kv_heads, m, head_dim]` for the bank's layers, with RoPE applied at
    the entries' original positions (the bank's shared prefix at `0..p-1`, the chunk at `p..p+n-1`),
    which `positions` `[layers, kv_heads, m]` records entry by entry; they are `Quantized` (packed, with
    their scales) in a bank of fewer than 16 bits. `keys` is None in a bank of token ids only, `values`
    when the bank was built for gating only. `token_ids` are the chunk's raw tokens, so a block can
    always be expanded back to its text.
    """

    token_ids: torch.Tensor
    keys: torch.Tensor | Quantized | None
    values: torch.Tensor | Quantized | None
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
        return BlockInfo(
            self.document, self.token_start, self.char_span, self.num_tokens, self.num_entries, self.nbytes
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the block as stored: its KV (packed, with scales, when quantized) and positions, and its
        token ids at 4 bytes each."""
        return 4 * self.num_tokens + sum(_nbytes(t) for t in (self.keys, self.values, self.positions))

    def to(self, device: torch.device | str) -> MemoryBlock:
        return replace(
            self,
            keys=None if self.keys is None else self.keys.to(device, non_blocking=True),
            values=None if self.values is None else self.values.to(device, non_blocking=True),
            positions=None if self.positions is None else self.positions.to(device, non_blocking=True),
        )


def _nbytes(tensor: torch.Tensor | Quantized | None) -> int:
    if tensor is None:
        return 0
    return tensor.nbytes if isinstance(tensor, Quantized) else tensor.numel() * tensor.element_size()


class BlockTable(Sequence[BlockInfo]):
    """The infos of a bank's blocks as one `[blocks, 8]` int64 tensor (document, token start, character start and
    end, or -1 without a span, tokens, entries, bytes, shard): indexing gives a `BlockInfo`, sums are
    vectorised."""

    COLUMNS = ("document", "token_start", "char_start", "char_end", "tokens", "entries", "bytes", "shard")

    def __init__(self, table: torch.Tensor) -> None:
        if table.dim() != 2 or table.shape[1] != len(self.COLUMNS) or table.dtype != torch.int64:
            raise ValueError(
                f"a block table is [blocks, {len(self.COLUMNS)}] int64, got {table.dtype} {tuple(table.shape)}."
            )
        self.table = table

    @classmethod
    def of(cls, infos: Sequence[BlockInfo], shards: Sequence[int] | None = None) -> BlockTable:
        shards = shards if shards is not None else [0] * len(infos)
        rows = [
            [i.document, i.token_start, *(i.char_span or (-1, -1)), i.num_tokens, i.num_entries, i.num_bytes, shard]
            for i, shard in zip(infos, shards)
        ]
        return cls(torch.tensor(rows, dtype=torch.int64).reshape(-1, len(cls.COLUMNS)))

    def __len__(self) -> int:
        return self.table.shape[0]

    @overload
    def __getitem__(self, index: int) -> BlockInfo: ...

    @overload
    def __getitem__(self, index: slice) -> list[BlockInfo]: ...

    def __getitem__(self, index: int | slice) -> BlockInfo | list[BlockInfo]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        document, start, char_start, char_end, tokens, entries, size, _ = self.table[index].tolist()
        span = None if char_start < 0 else (char_start, char_end)
        return BlockInfo(document, start, span, tokens, entries, size)

    def __iter__(self) -> Iterator[BlockInfo]:
        return (self[i] for i in range(len(self)))

    def column(self, name: str) -> torch.Tensor:
        return self.table[:, self.COLUMNS.index(name)]

    def select(self, indices: list[int]) -> BlockTable:
        return BlockTable(self.table[torch.tensor(indices, dtype=torch.long)])

    def overlapping(self, spans: list[tuple[int, int]], document: int = 0) -> list[int]:
        """Indices of the blocks of `document` whose text overlaps any of the character `spans`."""
        starts, ends = self.column("char_start"), self.column("char_end")
        hit = torch.zeros(len(self), dtype=torch.bool)
        for start, end in spans:
            hit |= (starts >= 0) & (starts < end) & (start < ends)
        return (hit & (self.column("document") == document)).nonzero().flatten().tolist()
