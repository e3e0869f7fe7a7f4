"""The one writer of banks: blocks into shards of a bank folder, then one sealed index over every writer's shards.

Writing never holds more than one shard in memory. Several processes can fill one folder
(`compressmem.distributed`): each writes its own shards, one index lists them all. A shard is written
under a temporary name and renamed when complete, and records its blocks, so an interrupted compression
is resumed (`BankWriter(resume=True)`) rather than left half-written. A single-file bank is this folder,
packed (`pack.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file

from .block import BlockInfo, BlockTable, MemoryBlock
from .integrity import FIELDS, field_digests, seal, tensor_digest
from .layout import (
    DIGESTS_TENSOR,
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    PREFIX_FILE,
    SHARD_GLOB,
    STREAM_STATE,
    TABLE_FILE,
    TABLE_TENSOR,
    Prefix,
    block_tensors,
    file_metadata,
    info_row,
    kv_layout,
    row_digests,
    row_info,
    shard_name,
    shard_number,
    stored_names,
)
from .provenance import BankMismatchError, Provenance


class Entry(NamedTuple):
    """A block as a writer recorded it: its info, its shard (an index into the part's `shards`) and the digests
    of its stored fields (`integrity.FIELDS` order)."""

    info: BlockInfo
    shard: int
    digests: list[int]


@dataclass
class BankPart:
    """What one writer put in a bank folder: its shards (file name, size in bytes), its blocks by their
    place in the document, and the layout of their KV."""

    rank: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    blocks: dict[int, Entry] = field(default_factory=dict)
    kv: dict[str, Any] | None = None


class BankWriter:
    """Write blocks to shards of a bank folder, `shard_blocks` blocks a shard.

    The only writer of a folder calls `finish()` and then `write_index`; with several writers on one
    folder (one per process: `rank` of `world_size`), each calls `finish()` and one of them merges the
    parts with `write_index`. Writer `rank`'s k-th shard is number `k * world_size + rank`, so the
    writers' file names never collide. A shard is written under a temporary name and renamed when
    complete, and records its blocks (with a SHA-256 of their token ids), so a folder whose writing was
    interrupted (shards, no index) is resumed by a writer made with `resume=True` and the same `provenance`
    and `world_size`: it keeps the complete shards and `has` their blocks; a partial shard is discarded.
    Every kept block must then be checked against the text given now (`check_resumed`), and `finish()`
    refuses a text that ended before the kept blocks did: a resumed bank holds the text it is given, no more.
    """

    def __init__(
        self,
        directory: str | Path,
        provenance: Provenance,
        shard_blocks: int = 256,
        rank: int = 0,
        world_size: int = 1,
        resume: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in 0..{world_size - 1} for {world_size} writers; got {rank}.")
        if isinstance(shard_blocks, bool) or not isinstance(shard_blocks, int) or shard_blocks < 1:
            raise ValueError(f"shard_blocks must be a positive number of blocks per shard, got {shard_blocks!r}.")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / INDEX).exists():
            raise FileExistsError(f"{self.directory} already holds a memory bank; choose an empty folder.")
        self.shard_blocks = shard_blocks
        self.world_size = world_size
        self.identity = provenance_identity(provenance)
        self.part = BankPart(rank)
        self._pending: dict[str, torch.Tensor] = {}
        self._rows: list[list] = []
        self._unchecked: set[int] = set()  # resumed blocks the text given now has not reached yet
        self._shard_hashes: dict[int, tuple[str, int, Any]] = {}  # resumed shard: (recorded SHA, last block, hasher)
        interrupted = interrupted_shards(self.directory)
        if interrupted and not resume:
            raise FileExistsError(
                f"{self.directory} holds {len(interrupted)} shards of an interrupted compression: resume it (run "
                "compress_stream again with the same text and settings), or choose an empty folder."
            )
        if interrupted:
            self._resume(interrupted)

    def has(self, index: int) -> bool:
        """Whether block `index` is already written (in a complete shard, or queued for the next one)."""
        return index in self.part.blocks

    def check_resumed(self, index: int, chunk_ids: torch.Tensor, info: tuple) -> None:
        """Raise `BankMismatchError` unless resumed block `index` was made from these token ids at this place
        (`info`: document, token start, character span): the interrupted run read the same text. The block's
        tokens are checked against its digest, and, once its shard's last block is reached, the shard's tokens
        against the SHA-256 the shard records."""
        entry = self.part.blocks[index]
        ids = chunk_ids.to(torch.int32)
        same_place = (entry.info.document, entry.info.token_start, entry.info.char_span) == info
        if not same_place or entry.digests[0] != tensor_digest([ids]):
            raise self._other_text(
                f"its block {index} ({_where(entry.info)}) holds other tokens than the text given now at that place"
            )
        self._unchecked.discard(index)
        if entry.shard in self._shard_hashes:
            recorded, last, hasher = self._shard_hashes[entry.shard]
            hasher.update(ids.contiguous().numpy().tobytes())
            if index == last and hasher.hexdigest() != recorded:
                raise self._other_text(
                    f"the tokens of its shard {self.part.shards[entry.shard]['file']} differ from the text given now"
                )

    def _other_text(self, difference: str) -> BankMismatchError:
        return BankMismatchError(
            f"{self.directory} holds an interrupted compression of another text: {difference}. Give the same text "
            "to resume it, or write the bank to a new folder (or delete this one)."
        )

    def add(self, block: MemoryBlock, index: int | None = None) -> None:
        """Queue `block` as the document's block number `index` (default: after the last one added)."""
        index = len(self.part.blocks) if index is None else index
        if index in self.part.blocks:
            raise ValueError(f"block {index} was already written to {self.directory}.")
        tensors = block_tensors(block, index)
        digests = field_digests(tensors, stored_names(index))
        self._pending.update(tensors)
        self._rows.append([index, *info_row(block.info), *(f"{d:016x}" for d in digests)])  # fixed width
        self.part.blocks[index] = Entry(block.info, len(self.part.shards), digests)
        self.part.kv = self.part.kv or kv_layout(block)
        if len(self._rows) == self.shard_blocks:
            self._flush()

    def finish(self) -> BankPart:
        """Write the last shard; the part, for `write_index`. Refused when resumed blocks were never reached:
        the text given now ended before the interrupted run's did, so it is another (shorter) text."""
        if self._unchecked:
            first, last = min(self._unchecked), max(self._unchecked)
            raise self._other_text(
                f"it holds blocks {first}..{last} (from {_where(self.part.blocks[first].info)}) beyond the end of "
                f"the text given now, which ends after block {first - 1}"
            )
        self._flush()
        return self.part

    def _flush(self) -> None:
        if not self._pending:
            return
        path = self.directory / shard_name(len(self.part.shards) * self.world_size + self.part.rank)
        partial = path.with_name(path.name + ".partial")
        metadata = {
            "format": FORMAT,
            "rank": str(self.part.rank),
            "world_size": str(self.world_size),
            "identity": self.identity,
            "blocks": json.dumps(self._rows),
            "kv": json.dumps(self.part.kv),
            "tokens_sha256": _tokens_sha256(self._pending[stored_names(row[0])["token_ids"]] for row in self._rows),
        }
        save_file(self._pending, str(partial), metadata=metadata)
        os.replace(partial, path)
        self.part.shards.append(_shard_record(path))
        self._pending = {}
        self._rows = []

    def _resume(self, shards: list[Path]) -> None:
        """Take over this writer's complete shards of an interrupted run; remove its partial ones."""
        for partial in self.directory.glob(SHARD_GLOB + ".partial"):
            if shard_number(partial) % self.world_size == self.part.rank:
                partial.unlink(missing_ok=True)
        for path in shards:
            number = shard_number(path)
            metadata = file_metadata(path)
            if int(metadata.get("world_size", -1)) != self.world_size or metadata.get("identity") != self.identity:
                raise BankMismatchError(
                    f"{self.directory} holds an interrupted compression made with other settings, another model or "
                    f"{metadata.get('world_size')} processes ({path.name}); resume it with the same ones, or choose "
                    "an empty folder."
                )
            if number % self.world_size != self.part.rank:
                continue
            if number != len(self.part.shards) * self.world_size + self.part.rank:
                raise BankMismatchError(
                    f"{self.directory} lacks a shard before {path.name}; its interrupted "
                    "compression cannot be resumed: choose an empty folder."
                )
            rows = json.loads(metadata["blocks"])
            for row in rows:
                self.part.blocks[row[0]] = Entry(row_info(row[1:8]), len(self.part.shards), row_digests(row))
                self._unchecked.add(row[0])
            if "tokens_sha256" in metadata and rows:  # shards of release 0.4 record only each block's CRC
                self._shard_hashes[len(self.part.shards)] = (metadata["tokens_sha256"], rows[-1][0], hashlib.sha256())
            self.part.kv = self.part.kv or json.loads(metadata.get("kv", "null"))
            self.part.shards.append(_shard_record(path))


def _tokens_sha256(token_ids: Iterable[torch.Tensor]) -> str:
    """The SHA-256 of blocks' token ids (int32, in order): what a resumed shard's text is proven against."""
    hashed = hashlib.sha256()
    for ids in token_ids:
        hashed.update(ids.to(torch.int32).contiguous().numpy().tobytes())
    return hashed.hexdigest()


def _where(info: BlockInfo) -> str:
    """Where a block lies in its text, in words."""
    span = f", characters {info.char_span[0]}..{info.char_span[1]}" if info.char_span is not None else ""
    return f"tokens {info.token_start}..{info.token_start + info.num_tokens}{span}"


def interrupted_shards(directory: Path) -> list[Path]:
    """The complete shards in a folder that has no index: what an interrupted compression left, in order."""
    if (directory / INDEX).exists():
        return []
    return sorted(p for p in directory.glob(SHARD_GLOB) if shard_number(p) >= 0)


def stream_settings(provenance: Provenance, prefix_ids: torch.Tensor, prefix_text: str) -> dict[str, Any]:
    """Everything a streamed bank's blocks depend on, each under the name a user knows it by: the base model,
    the chunk size, every compression setting (method, ratio, score, bits, group) and the compressor's weights,
    the layers and values kept, and the section prefix every chunk is compressed after (the chat template's
    opening of a turn and `prompts.section_header`: its tokens enter the KV and set the positions)."""
    compression = {} if provenance.compression is None else dataclasses.asdict(provenance.compression)
    settings = {
        "base model fingerprint": provenance.fingerprint.digest,
        "base model layer weights (fingerprint)": provenance.fingerprint.layers,
        "chunking.size": provenance.chunk_size,
        "compression": "none kept (token ids only)" if provenance.compression is None else "compressed KV",
        **{f"compression.{name}": value for name, value in compression.items()},
        "compressor weights (digest)": provenance.compressor_digest,
        "layers kept": list(provenance.layers),
        "values kept": provenance.values,
        "section prefix (prompts.section_header after the chat template's opening)": prefix_text,
        "section prefix token ids": [int(i) for i in prefix_ids.tolist()],
        "position of a chunk's first token": int(prefix_ids.numel()),
    }
    return json.loads(json.dumps(settings))  # as read back from the folder: lists, not tuples


def check_stream_settings(directory: Path, settings: dict[str, Any], record: bool) -> None:
    """Refuse to resume the interrupted stream in `directory` when it was made with other `settings`, naming
    every setting that differs with both values; with `record` (one process of those sharing the stream), keep
    `settings` as the folder's in-progress state when it has none. A complete bank is left to the writer (it
    refuses the folder); an interrupted folder of release 0.4 (no state) is checked by the writer's identity."""
    path = directory / STREAM_STATE
    if (directory / INDEX).exists():
        return
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))["settings"]
        except (ValueError, KeyError, TypeError):
            raise BankMismatchError(
                f"{path} (the settings of an interrupted compression) is damaged: write the bank to a new folder "
                "(or delete this one)."
            ) from None
        differ = [name for name in {**settings, **recorded} if recorded.get(name) != settings.get(name)]
        if differ:
            what = "; ".join(f"{name} {recorded.get(name)!r} then, {settings.get(name)!r} now" for name in differ)
            raise BankMismatchError(
                f"{directory} holds an interrupted compression made with other settings ({what}): resume it with "
                "the same settings, or write the bank to a new folder (or delete this one)."
            )
    elif record:
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps({"format": FORMAT, "settings": settings}), encoding="utf-8")
        os.replace(partial, path)


def provenance_identity(provenance: Provenance) -> str:
    """A short hash of how a bank is built (model, chunking, compression, layers): writers that share a folder,
    or resume one, must agree on it."""
    return hashlib.sha256(json.dumps(provenance.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _shard_record(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size}


def merge_parts(parts: Sequence[BankPart]) -> tuple[list[dict[str, Any]], list[int], list[Entry]]:
    """The writers' parts as one index: every shard with the rank that wrote it, every block in document order
    (its shard counted over all parts).

    Raises `ValueError` when the parts do not hold blocks `0..n-1` exactly once (a writer missed or
    repeated some).
    """
    shards: list[dict[str, Any]] = []
    shard_ranks: list[int] = []
    rows: dict[int, Entry] = {}
    for part in sorted(parts, key=lambda p: p.rank):
        repeated = sorted(rows.keys() & part.blocks.keys())
        if repeated:
            raise ValueError(f"blocks {repeated[:5]} were written by more than one process.")
        rows.update({i: entry._replace(shard=entry.shard + len(shards)) for i, entry in part.blocks.items()})
        shards += part.shards
        shard_ranks += [part.rank] * len(part.shards)
    missing = sorted(set(range(len(rows))) - rows.keys())
    if missing:
        raise ValueError(f"blocks {missing[:5]} of the document were written by no process.")
    return shards, shard_ranks, [rows[i] for i in range(len(rows))]


def write_index(
    directory: str | Path, parts: Sequence[BankPart], prefix: Prefix, provenance: Provenance
) -> dict[str, Any]:
    """Write `prefix.safetensors`, the block table and the one `bank.json` listing every writer's blocks, sealed
    (the index last, atomically, so a folder with an index is a complete bank); the index written."""
    directory = Path(directory)
    shards, shard_ranks, rows = merge_parts(parts)
    prefix_tensors, table_tensors = prefix.tensors(), _table_tensors(rows)
    save_file(prefix_tensors, str(directory / PREFIX_FILE))
    save_file(table_tensors, str(directory / TABLE_FILE))
    kv = next((part.kv for part in parts if part.kv is not None), None)
    index = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "provenance": provenance.to_dict(),
        "kv": kv,
        "prefix": PREFIX_FILE,
        "shards": [{**shard, "rank": rank} for shard, rank in zip(shards, shard_ranks)],
        "blocks": len(rows),
    }
    index["seal"] = seal(index, {**prefix_tensors, **table_tensors})
    partial = directory / f"{INDEX}.partial"
    partial.write_text(json.dumps(index), encoding="utf-8")
    os.replace(partial, directory / INDEX)
    (directory / STREAM_STATE).unlink(missing_ok=True)  # the stream is complete: nothing is left to resume
    return index


def _table_tensors(rows: Sequence[Entry]) -> dict[str, torch.Tensor]:
    """The block table and the blocks' digests, as stored."""
    table = BlockTable.of([entry.info for entry in rows], [entry.shard for entry in rows])
    digests = torch.tensor([entry.digests for entry in rows], dtype=torch.int64).reshape(-1, len(FIELDS))
    return {TABLE_TENSOR: table.table, DIGESTS_TENSOR: digests}
