"""Banks on disk: blocks written shard by shard while compressing, read back one block at a time.

A bank folder holds `bank.json` (fingerprint, settings, block spans, which shard holds which block)
and `blocks-NNNNN.safetensors` shards. Writing never holds more than one shard in memory; reading
memory-maps the shards and loads a block only when it is asked for, so a bank of millions of
tokens costs disk, not RAM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .bank import FORMAT_VERSION, BankMismatchError, MemoryBank, MemoryBlock
from .fingerprint import BaseFingerprint

INDEX = "bank.json"
_FIELDS = ("token_ids", "keys", "values", "positions")


class BankWriter:
    """Append blocks to a bank folder; `close()` writes the index and returns the bank, opened from disk."""

    def __init__(self, directory: str | Path, shard_blocks: int = 256) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / INDEX).exists():
            raise FileExistsError(f"{self.directory} already holds a memory bank; choose an empty folder.")
        self.shard_blocks = shard_blocks
        self._pending: dict[str, torch.Tensor] = {}
        self._spans: list[list] = []
        self._shards: list[str] = []

    def add(self, block: MemoryBlock) -> None:
        index = len(self._spans)
        for name in _FIELDS:
            tensor = getattr(block, name)
            if tensor is not None:
                stored = tensor.to(torch.int32) if name == "token_ids" else tensor
                self._pending[f"{index}.{name}"] = stored.detach().contiguous().cpu()
        self._spans.append([block.document, block.token_start, list(block.char_span) if block.char_span else None,
                            len(self._shards)])
        if (index + 1) % self.shard_blocks == 0:
            self._flush()

    def close(self, prefix_ids: torch.Tensor, prefix_keys: torch.Tensor | None, prefix_values: torch.Tensor | None,
              layers: tuple[int, ...], fingerprint: BaseFingerprint, settings: dict[str, Any]) -> MemoryBank:
        self._flush()
        prefix = {"prefix_ids": prefix_ids.to(torch.int32)}
        prefix.update({name: t.contiguous().cpu() for name, t in (("prefix_keys", prefix_keys),
                                                                   ("prefix_values", prefix_values)) if t is not None})
        save_file(prefix, str(self.directory / "prefix.safetensors"))
        index = {"format": "compressmem.MemoryBank", "format_version": FORMAT_VERSION, "layers": list(layers),
                 "fingerprint": fingerprint.to_dict(), "settings": settings, "shards": self._shards,
                 "blocks": self._spans}
        (self.directory / INDEX).write_text(json.dumps(index), encoding="utf-8")
        return open_bank(self.directory)

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"blocks-{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(self.directory / name))
        self._shards.append(name)
        self._pending = {}


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
