"""Banks on disk: blocks written shard by shard while compressing, read back one block at a time.

A bank folder holds `bank.json` (fingerprint, settings, block spans, which shard holds which block
and which process wrote it), `prefix.safetensors` and `blocks-NNNNN.safetensors` shards. Writing
never holds more than one shard in memory; reading memory-maps the shards and loads a block only
when it is asked for, so a bank of millions of tokens costs disk, not RAM. Several processes can
fill one folder (`compressmem.distributed`): each writes its own shards, one index lists them all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .bank import FORMAT_VERSION, BankMismatchError, MemoryBank, MemoryBlock
from .fingerprint import BaseFingerprint

INDEX = "bank.json"
_FIELDS = ("token_ids", "keys", "values", "positions")


@dataclass
class BankPart:
    """What one writer put in a bank folder: its shards and, per block it wrote, the block's span.

    `blocks` maps a block's place in the document to `[document, token_start, char_span, shard]`,
    `shard` indexing this part's own `shards`.
    """

    rank: int
    shards: list[str] = field(default_factory=list)
    blocks: dict[int, list] = field(default_factory=dict)


class BankWriter:
    """Write blocks to shards of a bank folder; `close()` writes the index and returns the bank, opened from disk.

    With several writers on one folder (one per process: `rank` of `world_size`), each calls
    `finish()` instead and one of them merges the parts with `write_index`. Writer `rank`'s k-th
    shard is number `k * world_size + rank`, so the writers' file names never collide.
    """

    def __init__(self, directory: str | Path, shard_blocks: int = 256, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in 0..{world_size - 1} for {world_size} writers; got {rank}.")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / INDEX).exists():
            raise FileExistsError(f"{self.directory} already holds a memory bank; choose an empty folder.")
        self.shard_blocks = shard_blocks
        self.world_size = world_size
        self.part = BankPart(rank)
        self._pending: dict[str, torch.Tensor] = {}

    def add(self, block: MemoryBlock, index: int | None = None) -> None:
        """Queue `block` as the document's block number `index` (default: after the last one added)."""
        index = len(self.part.blocks) if index is None else index
        if index in self.part.blocks:
            raise ValueError(f"block {index} was already written to {self.directory}.")
        for name in _FIELDS:
            tensor = getattr(block, name)
            if tensor is not None:
                stored = tensor.to(torch.int32) if name == "token_ids" else tensor
                self._pending[f"{index}.{name}"] = stored.detach().contiguous().cpu()
        self.part.blocks[index] = [block.document, block.token_start,
                                   list(block.char_span) if block.char_span else None, len(self.part.shards)]
        if len(self.part.blocks) % self.shard_blocks == 0:
            self._flush()

    def finish(self) -> BankPart:
        """Write the last shard; the part, for `write_index`."""
        self._flush()
        return self.part

    def close(self, prefix_ids: torch.Tensor, prefix_keys: torch.Tensor | None, prefix_values: torch.Tensor | None,
              layers: tuple[int, ...], fingerprint: BaseFingerprint, settings: dict[str, Any]) -> MemoryBank:
        """The only writer's end: write the index and return the bank, opened from disk."""
        write_index(self.directory, [self.finish()], prefix_ids, prefix_keys, prefix_values, layers, fingerprint,
                    settings)
        return open_bank(self.directory)

    def _flush(self) -> None:
        if not self._pending:
            return
        number = len(self.part.shards) * self.world_size + self.part.rank
        name = f"blocks-{number:05d}.safetensors"
        save_file(self._pending, str(self.directory / name))
        self.part.shards.append(name)
        self._pending = {}


def merge_parts(parts: Sequence[BankPart]) -> tuple[list[str], list[int], list[list]]:
    """The writers' parts as one index: every shard with the rank that wrote it, every block in document order.

    Raises `ValueError` when the parts do not hold blocks `0..n-1` exactly once (a writer missed or
    repeated some).
    """
    shards: list[str] = []
    shard_ranks: list[int] = []
    spans: dict[int, list] = {}
    for part in sorted(parts, key=lambda p: p.rank):
        repeated = sorted(spans.keys() & part.blocks.keys())
        if repeated:
            raise ValueError(f"blocks {repeated[:5]} were written by more than one process.")
        spans.update({i: [*span[:3], span[3] + len(shards)] for i, span in part.blocks.items()})
        shards += part.shards
        shard_ranks += [part.rank] * len(part.shards)
    missing = sorted(set(range(len(spans))) - spans.keys())
    if missing:
        raise ValueError(f"blocks {missing[:5]} of the document were written by no process.")
    return shards, shard_ranks, [spans[i] for i in range(len(spans))]


def write_index(directory: str | Path, parts: Sequence[BankPart], prefix_ids: torch.Tensor,
                prefix_keys: torch.Tensor | None, prefix_values: torch.Tensor | None, layers: tuple[int, ...],
                fingerprint: BaseFingerprint, settings: dict[str, Any]) -> None:
    """Write `prefix.safetensors` and the one `bank.json` listing every writer's blocks (the index last)."""
    directory = Path(directory)
    shards, shard_ranks, spans = merge_parts(parts)
    prefix = {"prefix_ids": prefix_ids.to(torch.int32)}
    prefix.update({name: t.contiguous().cpu() for name, t in (("prefix_keys", prefix_keys),
                                                               ("prefix_values", prefix_values)) if t is not None})
    save_file(prefix, str(directory / "prefix.safetensors"))
    index = {"format": "compressmem.MemoryBank", "format_version": FORMAT_VERSION, "layers": list(layers),
             "fingerprint": fingerprint.to_dict(), "settings": settings, "shards": shards,
             "shard_ranks": shard_ranks, "blocks": spans}
    partial = directory / f"{INDEX}.partial"
    partial.write_text(json.dumps(index), encoding="utf-8")
    os.replace(partial, directory / INDEX)


class DiskBlocks(Sequence):
    """The blocks of a bank folder, loaded from the memory-mapped shards on each access (never cached)."""

    def __init__(self, directory: Path, shards: list[str], spans: list[list]) -> None:
        self.directory = directory
        self.shards = shards
        self.spans = spans

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"block {index} of a {len(self)}-block bank")
        index %= len(self)
        document, token_start, span, shard = self.spans[index]
        with safe_open(str(self.directory / self.shards[shard]), framework="pt") as handle:
            names = set(handle.keys())
            tensors = {f: handle.get_tensor(f"{index}.{f}") if f"{index}.{f}" in names else None for f in _FIELDS}
        tensors["token_ids"] = tensors["token_ids"].long()
        return MemoryBlock(**tensors, document=document, token_start=token_start,
                           char_span=tuple(span) if span else None)

    def __iter__(self) -> Iterator[MemoryBlock]:
        return (self[i] for i in range(len(self)))


def open_bank(directory: str | Path) -> MemoryBank:
    """A bank folder written by `BankWriter` (or `compress_stream`), its blocks left on disk until read."""
    directory = Path(directory)
    path = directory / INDEX
    if not path.is_file():
        raise BankMismatchError(f"{directory} is not a compressmem bank folder ({INDEX} is missing).")
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("format") != "compressmem.MemoryBank":
        raise BankMismatchError(f"{path} is not a compressmem bank index.")
    if index["format_version"] > FORMAT_VERSION:
        raise BankMismatchError(f"{directory} uses bank format {index['format_version']}; this compressmem reads up "
                                f"to {FORMAT_VERSION}. Upgrade compressmem.")
    with safe_open(str(directory / "prefix.safetensors"), framework="pt") as handle:
        prefix = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    return MemoryBank(
        blocks=DiskBlocks(directory, index["shards"], index["blocks"]),  # type: ignore[arg-type]
        prefix_ids=prefix["prefix_ids"].long(), prefix_keys=prefix.get("prefix_keys"),
        prefix_values=prefix.get("prefix_values"), layers=tuple(index["layers"]),
        fingerprint=BaseFingerprint.from_dict(index["fingerprint"]), settings=index["settings"],
    )
