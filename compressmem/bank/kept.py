"""`KeptKV`: the KV of blocks a bank's raw reads already computed, quantized and kept for the next read.

A raw read pre-fills the bank's prefix and a chunk's tokens before the update prompt, at the same
positions a block of method `none` would hold them (prefix at `0..p-1`, chunk at `p..p+n-1`). That KV
is exactly what a later read of the same block would compute again, so the reader keeps it (quantized,
`ReadingConfig.keep_bits`) and reads the block as a compressed block from then on: no pre-fill. It is
per bank and per process, in memory only (never saved with the bank), least recently read out first
once it holds more than its byte budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from ..quantize import Quantized


@dataclass(frozen=True)
class KeptBlock:
    """A block's KV as a raw read computed it, `[layers, kv_heads, n, d]`, quantized."""

    keys: Quantized
    values: Quantized

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


class KeptKV:
    """Blocks' kept KV by block index, and the bank prefix's KV (kept in full precision: every block reads it)."""

    def __init__(self) -> None:
        self._blocks: OrderedDict[int, KeptBlock] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None
        self.owner: Hashable = None  # what computed the kept KV (model, adapter, dtype): no other reader uses it

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    @property
    def nbytes(self) -> int:
        """Bytes of the kept blocks and prefix."""
        prefix = 0 if self.prefix is None else sum(t.numel() * t.element_size() for t in self.prefix)
        return prefix + self._bytes

    def get(self, block: int, owner: Hashable) -> tuple[tuple[torch.Tensor, torch.Tensor], KeptBlock] | None:
        """The prefix's KV and the block's kept KV (marked as the most recently read), or None when the block
        was not kept, or was kept by another `owner` (another model, adapter or dtype computes other KV)."""
        with self._lock:
            kept = self._blocks.get(block)
            if kept is None or self.prefix is None or owner != self.owner:
                return None
            self._blocks.move_to_end(block)
            return self.prefix, kept

    def needs_prefix(self, owner: Hashable) -> bool:
        """Whether the next `put` by `owner` must bring the prefix's KV."""
        return self.prefix is None or owner != self.owner

    def put(
        self,
        block: int,
        kept: KeptBlock,
        prefix: tuple[torch.Tensor, torch.Tensor] | None,
        budget: int,
        owner: Hashable,
    ) -> None:
        """Keep `block`'s KV computed by `owner` (and the prefix's, when `needs_prefix`; what another owner kept
        is dropped), then drop the least recently read blocks until at most `budget` bytes are kept."""
        with self._lock:
            if owner != self.owner:
                self._blocks.clear()
                self._bytes, self.prefix, self.owner = 0, None, owner
            if self.prefix is None:
                if prefix is None:
                    raise ValueError("the first block kept by an owner must bring the prefix's KV.")
                self.prefix = prefix
            old = self._blocks.pop(block, None)
            self._bytes += kept.nbytes - (0 if old is None else old.nbytes)
            self._blocks[block] = kept
            while self._blocks and self.nbytes > budget:
                self._bytes -= self._blocks.popitem(last=False)[1].nbytes

    def clear(self) -> None:
        """Forget every kept block (e.g. to free memory)."""
        with self._lock:
            self._blocks.clear()
            self._bytes = 0
            self.prefix = None
