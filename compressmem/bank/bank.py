"""`MemoryBank`: a compressed document, computed once and reusable for any number of questions.

A bank is data: the shared section prefix, how it was built (`Provenance`), and its blocks in a
block store, in memory (`compress()`) or on disk (`compress_stream()`, `MemoryBank.load`). Its
length, token count and size come from the blocks' infos, so asking them never loads a block;
`bank.blocks[i]` loads one block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

import torch

from ..errors import SigningError
from ..hf.fingerprint import BaseFingerprint
from .block import BlockTable, MemoryBlock
from .derived import DerivedIndex, KeptIndexes
from .kept import KeptKV
from .layout import Prefix, kv_layout
from .memo import Memo
from .pack import write_file, write_folder
from .provenance import BankNeeds, Provenance
from .reader import read_bank
from .signing import check_signature, sign_bank

T = TypeVar("T")


class BlockStore(Protocol):
    """Where a bank's blocks live: `infos` (known without loading), a block or its token ids by index, and the
    gate indexes kept with the bank (and, per process, what was unpacked from them)."""

    infos: BlockTable
    memo: Memo

    def __len__(self) -> int: ...

    def load(self, index: int) -> MemoryBlock: ...

    def token_ids(self, index: int) -> torch.Tensor: ...

    def derived(self, name: str) -> DerivedIndex | None: ...

    def keep_derived(
        self, name: str, tensors: dict[str, torch.Tensor], metadata: dict, persist: bool = True
    ) -> None: ...

    def derived_items(self) -> dict[str, DerivedIndex]: ...

    def verify(self, show_progress: bool = False) -> None: ...


class MemoryStore:
    """Blocks held in memory (on any device); gate indexes built for them are kept in memory too."""

    def __init__(self, blocks: list[MemoryBlock]) -> None:
        self.blocks = blocks
        self.infos = BlockTable.of([block.info for block in blocks])
        self.memo = Memo()
        self.kept = KeptIndexes()

    def __len__(self) -> int:
        return len(self.blocks)

    def load(self, index: int) -> MemoryBlock:
        return self.blocks[index]

    def token_ids(self, index: int) -> torch.Tensor:
        return self.blocks[index].token_ids

    def derived(self, name: str) -> DerivedIndex | None:
        return self.kept.get(name)

    def keep_derived(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict, persist: bool = True) -> None:
        self.kept.put(name, tensors, metadata, persist)

    def derived_items(self) -> dict[str, DerivedIndex]:
        return self.kept.items()

    def verify(self, show_progress: bool = False) -> None:
        """Nothing to check: blocks in memory are the ones made."""


class SubsetStore:
    """Some blocks of another store, in a given order; its gate indexes are its own."""

    def __init__(self, store: BlockStore, indices: list[int]) -> None:
        self.store = store
        self.indices = indices
        self.infos = store.infos.select(indices)
        self.memo = Memo()
        self._own = MemoryStore([])

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> MemoryBlock:
        return self.store.load(self.indices[index])

    def token_ids(self, index: int) -> torch.Tensor:
        return self.store.token_ids(self.indices[index])

    def derived(self, name: str) -> DerivedIndex | None:
        return self._own.derived(name)

    def keep_derived(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict, persist: bool = True) -> None:
        self._own.keep_derived(name, tensors, metadata)

    def derived_items(self) -> dict[str, DerivedIndex]:
        return self._own.derived_items()

    def verify(self, show_progress: bool = False) -> None:
        self.store.verify(show_progress)


class Blocks(Sequence[MemoryBlock]):
    """A bank's blocks as a sequence: indexing loads one block (on the bank's device)."""

    def __init__(self, store: BlockStore, device: torch.device | None) -> None:
        self._store = store
        self._device = device

    def __len__(self) -> int:
        return len(self._store)

    @overload
    def __getitem__(self, index: int) -> MemoryBlock: ...

    @overload
    def __getitem__(self, index: slice) -> list[MemoryBlock]: ...

    def __getitem__(self, index: int | slice) -> MemoryBlock | list[MemoryBlock]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"block {index} of a {len(self)}-block bank")
        block = self._store.load(index % len(self))
        return block if self._device is None else block.to(self._device)

    def __iter__(self) -> Iterator[MemoryBlock]:
        return (self[i] for i in range(len(self)))


class MemoryBank:
    """The blocks of one context, the prefix they were compressed after, and how they were built."""

    def __init__(
        self,
        store: BlockStore,
        prefix: Prefix,
        provenance: Provenance,
        kv: dict[str, Any] | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.provenance = provenance
        self.kv = kv  # the KV's dtype and per-entry shape, as the index records them
        self.device = device  # where blocks land when read (None: where they are)
        self.kept = KeptKV()  # KV that raw reads computed, kept for the next read of the same block

    @classmethod
    def from_blocks(cls, blocks: list[MemoryBlock], prefix: Prefix, provenance: Provenance) -> MemoryBank:
        """A bank held in memory."""
        kv = kv_layout(blocks[0]) if blocks else None
        return cls(MemoryStore(blocks), prefix, provenance, kv)

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return (
            f"MemoryBank({len(self)} blocks, {self.num_tokens} tokens, {self.nbytes / 2**20:.1f} MiB; "
            f"{self.provenance.describe()})"
        )

    @property
    def blocks(self) -> Blocks:
        return Blocks(self.store, self.device)

    @property
    def infos(self) -> BlockTable:
        """Every block's source span and size (`BlockInfo`s), from the index (no block is loaded)."""
        return self.store.infos

    @property
    def prefix_ids(self) -> torch.Tensor:
        return self.prefix.ids

    @property
    def prefix_keys(self) -> torch.Tensor | None:
        return self.prefix.keys

    @property
    def prefix_values(self) -> torch.Tensor | None:
        return self.prefix.values

    @property
    def layers(self) -> tuple[int, ...]:
        return self.provenance.layers

    @property
    def fingerprint(self) -> BaseFingerprint:
        """The base model the bank was computed with."""
        return self.provenance.fingerprint

    @property
    def has_values(self) -> bool:
        return self.provenance.values

    @property
    def num_tokens(self) -> int:
        """Tokens of the original context held by the bank."""
        return int(self.infos.column("tokens").sum())

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor the bank holds as saved: KV, positions, and token ids at 4 bytes each."""
        prefix = 4 * self.prefix.ids.numel() + sum(
            t.numel() * t.element_size() for t in (self.prefix.keys, self.prefix.values) if t is not None
        )
        return prefix + int(self.infos.column("bytes").sum())

    def token_ids(self, index: int) -> torch.Tensor:
        """Block `index`'s raw token ids, without loading its KV."""
        return self.store.token_ids(index)

    def check(self, needs: BankNeeds) -> None:
        """Raise `BankMismatchError`, naming both sides, unless this bank holds what a reader `needs`."""
        self.provenance.check(needs)

    def subset(self, indices: list[int]) -> MemoryBank:
        """A bank of only the blocks at `indices`, in that order (e.g. the evidence blocks of an oracle gate)."""
        if any(not 0 <= i < len(self) for i in indices):
            raise IndexError(f"block indices {indices} must lie in 0..{len(self) - 1}.")
        return MemoryBank(SubsetStore(self.store, list(indices)), self.prefix, self.provenance, self.kv, self.device)

    def blocks_overlapping(self, spans: list[tuple[int, int]], document: int = 0) -> list[int]:
        """Indices of the blocks whose text overlaps any of the character `spans` of `document`."""
        return self.infos.overlapping(spans, document)

    def to(self, device: torch.device | str) -> MemoryBank:
        """The bank with its blocks delivered on `device` (e.g. "cpu" to offload a bank built on a GPU): an
        in-memory bank moves now; a bank on disk loads each block there when it is read."""
        device = torch.device(device)
        prefix = Prefix(
            self.prefix.ids, *(None if t is None else t.to(device) for t in (self.prefix.keys, self.prefix.values))
        )
        if isinstance(self.store, MemoryStore):
            return MemoryBank(
                MemoryStore([block.to(device) for block in self.store.blocks]), prefix, self.provenance, self.kv
            )
        return MemoryBank(self.store, prefix, self.provenance, self.kv, device)

    def save(self, path: str | Path, *, folder: bool = False, shard_blocks: int = 256, sign_key: Any = None) -> None:
        """Write the bank as a bank folder of shards of `shard_blocks` blocks (with `folder`: what `compress_stream`
        writes), or as one safetensors file that packs that folder (its index in the file's metadata). Tensors
        plus JSON, never pickle; the gate indexes built so far go with it, under their digests.
        `MemoryBank.load` reads both. With `sign_key` (an Ed25519 private key, an `HmacKey`, or a key file's
        path) the bank is signed (`signing.py`), so readers who trust the key can tell it from a forgery."""
        derived = self.store.derived_items()
        if folder:
            write_folder(path, self.blocks, self.prefix, self.provenance, derived, shard_blocks)
            if sign_key is not None:
                sign_bank(path, sign_key)
        else:
            write_file(path, self.blocks, self.prefix, self.provenance, derived, sign_key)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: torch.device | str | None = None,
        *,
        verify: bool = False,
        show_progress: bool = False,
        trusted_keys: Sequence[Any] | None = None,
    ) -> MemoryBank:
        """Open a bank saved by `save` or `compress_stream` (or by an earlier release): its blocks stay on disk
        and are read one at a time, onto `device` when given.

        Opening checks the bank's seal and that every shard is present, inside the folder and of its recorded
        size (milliseconds, whatever the bank's length). The first read from a shard checks that it holds the
        blocks the table gives it, every block read is checked against its digests, and a kept gate index
        against its own; a damaged or mixed bank raises `BankMismatchError` naming the file. With `verify`,
        every shard, every block and every kept gate index are checked now (`verify()`).

        The seal proves the bank is read as written, not who wrote it: with `trusted_keys` (Ed25519 public keys,
        `HmacKey`s, or key files' paths) a bank is refused unless it is signed by one of them (`signing.py`)."""
        store, prefix, provenance, kv = read_bank(path)
        if trusted_keys is not None:
            if isinstance(trusted_keys, (str, Path)) or not list(trusted_keys):
                raise SigningError(
                    "trusted_keys must be a list of one or more keys (or key files' paths); give None to load "
                    "without checking a signature."
                )
            check_signature(store.signature, store.kept.bank_seal(), list(trusted_keys), Path(path))
        bank = cls(store, prefix, provenance, kv)
        if verify:
            bank.verify(show_progress=show_progress)
        return bank if device is None else bank.to(device)

    def verify(self, *, show_progress: bool = False) -> None:
        """Read the whole bank back and raise `BankMismatchError` at the first shard or block that is not what
        was written (a bank on disk; one in memory has nothing to check)."""
        self.store.verify(show_progress)

    def derived(self, name: str) -> DerivedIndex | None:
        """The gate index `name` kept with this bank, or None."""
        return self.store.derived(name)

    def memo(self, key: Any, make: Callable[[], T]) -> T:
        """What `make()` returns, made once per process for this bank's blocks (a gate's unpacked index)."""
        return self.store.memo.get(key, make)

    def keep_derived(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict, persist: bool = True) -> None:
        """Keep gate index `name` with this bank for this process and, with `persist`, beside a bank folder's
        shards, so no later process rebuilds it."""
        self.store.keep_derived(name, tensors, metadata, persist)
