"""`KeptKV`: the KV of blocks a bank's raw reads already computed, quantized and kept for the next read.

A raw read pre-fills the bank's prefix and a chunk's tokens before the update prompt, at the same
positions a block of method `none` would hold them (prefix at `0..p-1`, chunk at `p..p+n-1`). That KV
is exactly what a later read of the same block would compute again, so the reader keeps it (quantized,
`ReadingConfig.keep_bits`) and reads the block as a compressed block from then on: no pre-fill. It is
per bank and per process, in memory only (never saved with the bank), least recently read out first
once it holds more than its byte budget.

Each owner (what computed the KV: a model object, its reasoner adapter and its dtype) keeps its own blocks
and prefix side by side, so that readers of one bank with different models never read each other's KV nor
drop it: they share the bank's byte budget, least recently read first out, whoever kept it. Owners are told
apart by `owner_token`, never by `id()`, which a later object may reuse.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from ..quantize import Quantized

_tokens_lock = threading.RLock()  # reentrant: a collection inside owner_token may run _forget
_tokens: dict[int, int] = {}  # id(object) -> its token, while the object lives
_next_token = itertools.count(1)


def owner_token(obj: object) -> int:
    """A number that stands for `obj` while it lives and that no other object of this process ever gets.

    Unlike `id(obj)`, the token of an object created after `obj` was garbage collected (perhaps at the same
    address) is new, so KV kept for a model that is gone is never read by another. `obj` must accept weak
    references (models, modules and ordinary objects do).
    """
    with _tokens_lock:
        token = _tokens.get(id(obj))
        if token is None:
            token = _tokens[id(obj)] = next(_next_token)
            weakref.finalize(obj, _forget, id(obj), token).atexit = False
        return token


def _forget(address: int, token: int) -> None:
    with _tokens_lock:
        if _tokens.get(address) == token:
            del _tokens[address]


@dataclass(frozen=True)
class KeptBlock:
    """A block's KV as a raw read computed it, `[layers, kv_heads, n, d]`, quantized."""

    keys: Quantized
    values: Quantized

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


class KeptKV:
    """Each owner's kept KV by block index, and its bank prefix's KV (kept in full precision: every block reads it).

    Thread-safe: one lock covers every lookup and store, so readers sharing a bank from several threads (with one
    model or several) never see another's half-made entry.
    """

    def __init__(self) -> None:
        self._blocks: OrderedDict[tuple[Hashable, int], KeptBlock] = OrderedDict()  # least recently read first
        self._prefixes: dict[Hashable, tuple[torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()
        self._bytes = 0

    def __len__(self) -> int:
        """Blocks kept, every owner's counted."""
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        """Whether any owner keeps `block`."""
        with self._lock:
            return any(index == block for _, index in self._blocks)

    @property
    def owners(self) -> set[Hashable]:
        """The owners that keep KV here."""
        with self._lock:
            return set(self._prefixes)

    def blocks(self, owner: Hashable) -> list[int]:
        """The blocks `owner` keeps, least recently read first."""
        with self._lock:
            return [index for who, index in self._blocks if who == owner]

    @property
    def nbytes(self) -> int:
        """Bytes of the kept blocks and prefixes."""
        with self._lock:
            return self._nbytes()

    def _nbytes(self) -> int:
        prefixes = sum(t.numel() * t.element_size() for kv in self._prefixes.values() for t in kv)
        return prefixes + self._bytes

    def get(self, block: int, owner: Hashable) -> tuple[tuple[torch.Tensor, torch.Tensor], KeptBlock] | None:
        """`owner`'s prefix KV and kept KV of `block` (marked as the most recently read), or None when `owner`
        did not keep it (KV another owner kept is never returned: another model, adapter or dtype computes
        other KV)."""
        with self._lock:
            kept = self._blocks.get((owner, block))
            if kept is None:
                return None
            self._blocks.move_to_end((owner, block))
            return self._prefixes[owner], kept

    def put(
        self,
        block: int,
        kept: KeptBlock,
        prefix: tuple[torch.Tensor, torch.Tensor],
        budget: int,
        owner: Hashable,
    ) -> None:
        """Keep `block`'s KV computed by `owner`, and the `prefix` KV it was computed after (copied, when `owner`
        has none kept yet), then drop the least recently read blocks of any owner until at most `budget` bytes
        are kept. Other owners' blocks are kept beside `owner`'s, never replaced."""
        with self._lock:
            if owner not in self._prefixes:
                self._prefixes[owner] = (prefix[0].clone(), prefix[1].clone())
            old = self._blocks.pop((owner, block), None)
            self._bytes += kept.nbytes - (0 if old is None else old.nbytes)
            self._blocks[(owner, block)] = kept
            while self._blocks and self._nbytes() > budget:
                (who, _), dropped = self._blocks.popitem(last=False)
                self._bytes -= dropped.nbytes
                if not any(other == who for other, _ in self._blocks):
                    del self._prefixes[who]  # its last block went: its prefix serves no read now

    def clear(self) -> None:
        """Forget every owner's kept blocks and prefixes (e.g. to free memory)."""
        with self._lock:
            self._blocks.clear()
            self._prefixes.clear()
            self._bytes = 0
