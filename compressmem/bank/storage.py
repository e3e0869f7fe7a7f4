"""The one bank format on disk, and all of its I/O: shards of blocks plus an index (DESIGN §3.5).

A bank folder holds `bank.json` (the index: how the bank was built, the KV's dtype and shape, every
shard), `table.safetensors` (per block its source span, its size and its shard, as one tensor: a bank
of millions of tokens opens in milliseconds), `prefix.safetensors` (the section prefix every chunk was
compressed after, and its KV) and `blocks-NNNNN.safetensors` shards. A bank may also be one
`.safetensors` file: the same tensors, with the index in the file's metadata (one shard that is also
the prefix and the table). Gate indexes built for the bank are kept beside it
(`derived-NAME.safetensors` in a folder, `derived.NAME.*` tensors in a file), so a question never
rebuilds them.

Writing never holds more than one shard in memory; reading loads a block only when it is asked for,
so a bank of millions of tokens costs disk, not RAM, and its size and token counts come from the
index. Several processes can fill one folder (`compressmem.distributed`): each writes its own
shards, one index lists them all. Banks written by release 0.1 (format 1, a folder or a file) and
release 0.2 (format 2) are read too.

A bank is sealed (format 3, `integrity`): every block's fields have digests in the table, every shard
its size in the index, and the index a seal over itself, the table and the prefix. Opening
checks the seal and the shards' sizes; the first read from a shard checks the blocks it records;
reading a block checks its digests; `MemoryBank.verify` reads everything back. A shard is written
under a temporary name and renamed when complete, and records its blocks, so an interrupted
compression is resumed (`BankWriter(resume=True)`) rather than left half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..config import CompressionConfig
from ..hf.fingerprint import BaseFingerprint
from ..quantize import CHANNELS, TOKENS, Quantized
from .block import BlockInfo, BlockTable, MemoryBlock
from .integrity import FIELDS, QUANTIZED_PARTS, field_digests, seal, tensor_digest
from .memo import Memo
from .provenance import BankMismatchError, Provenance

logger = logging.getLogger(__name__)

INDEX = "bank.json"
PREFIX_FILE = "prefix.safetensors"
TABLE_FILE = "table.safetensors"
TABLE_TENSOR = "block_table"
FORMAT = "compressmem.MemoryBank"
DIGESTS_TENSOR = "block_digests"
FORMAT_VERSION = 3
KEY = "{index}.{field}"


@dataclass(frozen=True)
class Prefix:
    """The tokens every chunk was compressed after (section header) and, in a bank of KV, their KV
    `[layers, kv_heads, p, head_dim]`, stored once for all blocks."""

    ids: torch.Tensor
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {"prefix_ids": self.ids.to(torch.int32), "prefix_keys": self.keys, "prefix_values": self.values}
        return {name: t.detach().contiguous().cpu() for name, t in named.items() if t is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Prefix:
        return cls(tensors["prefix_ids"].long(), tensors.get("prefix_keys"), tensors.get("prefix_values"))


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
    complete, and records its blocks, so a folder whose writing was interrupted (shards, no index)
    is resumed by a writer made with `resume=True` and the same `provenance` and `world_size`: it
    keeps the complete shards and `has` their blocks; a partial shard is discarded.
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
        self._rows: list[list[int]] = []
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
        (`info`: document, token start, character span): the interrupted run read the same text."""
        entry = self.part.blocks[index]
        same_place = (entry.info.document, entry.info.token_start, entry.info.char_span) == info
        if not same_place or entry.digests[0] != tensor_digest([chunk_ids.to(torch.int32)]):
            raise BankMismatchError(
                f"{self.directory} holds an interrupted compression of another text: its block {index} differs from "
                "the text given now. Give the same text to resume it, or choose an empty folder."
            )

    def add(self, block: MemoryBlock, index: int | None = None) -> None:
        """Queue `block` as the document's block number `index` (default: after the last one added)."""
        index = len(self.part.blocks) if index is None else index
        if index in self.part.blocks:
            raise ValueError(f"block {index} was already written to {self.directory}.")
        tensors = block_tensors(block, index)
        digests = field_digests(tensors, stored_names(index))
        self._pending.update(tensors)
        info = block.info
        self._rows.append([index, *_info_row(info), *(f"{d:016x}" for d in digests)])  # fixed width
        self.part.blocks[index] = Entry(info, len(self.part.shards), digests)
        self.part.kv = self.part.kv or kv_layout(block)
        if len(self._rows) == self.shard_blocks:
            self._flush()

    def finish(self) -> BankPart:
        """Write the last shard; the part, for `write_index`."""
        self._flush()
        return self.part

    def _flush(self) -> None:
        if not self._pending:
            return
        number = len(self.part.shards) * self.world_size + self.part.rank
        path = self.directory / f"blocks-{number:05d}.safetensors"
        partial = path.with_name(path.name + ".partial")
        metadata = {
            "format": FORMAT,
            "rank": str(self.part.rank),
            "world_size": str(self.world_size),
            "identity": self.identity,
            "blocks": json.dumps(self._rows),
            "kv": json.dumps(self.part.kv),
        }
        save_file(self._pending, str(partial), metadata=metadata)
        os.replace(partial, path)
        self.part.shards.append(_shard_record(path))
        self._pending = {}
        self._rows = []

    def _resume(self, shards: list[Path]) -> None:
        """Take over this writer's complete shards of an interrupted run; remove its partial ones."""
        for partial in self.directory.glob("blocks-*.safetensors.partial"):
            if _shard_number(partial) % self.world_size == self.part.rank:
                partial.unlink(missing_ok=True)
        for path in shards:
            number = _shard_number(path)
            metadata = _shard_metadata(path)
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
            for row in json.loads(metadata["blocks"]):
                self.part.blocks[row[0]] = Entry(_row_info(row[1:8]), len(self.part.shards), _digests(row))
            self.part.kv = self.part.kv or json.loads(metadata.get("kv", "null"))
            self.part.shards.append(_shard_record(path))


def interrupted_shards(directory: Path) -> list[Path]:
    """The complete shards in a folder that has no index: what an interrupted compression left, in order."""
    if (directory / INDEX).exists():
        return []
    return sorted(p for p in directory.glob("blocks-*.safetensors") if _shard_number(p) >= 0)


def _shard_number(path: Path) -> int:
    """The number in a shard's name (`blocks-00012.safetensors` is 12), or -1 for another file."""
    number = path.name.removeprefix("blocks-").split(".")[0]
    return int(number) if number.isdigit() else -1


def provenance_identity(provenance: Provenance) -> str:
    """A short hash of how a bank is built (model, chunking, compression, layers): writers that share a folder,
    or resume one, must agree on it."""
    return hashlib.sha256(json.dumps(provenance.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _shard_record(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size}


def _open(path: Path, device: str = "cpu"):
    """`safe_open` of a bank's file, refusing one that is missing, truncated or not safetensors with a
    `BankMismatchError` that names it."""
    try:
        return safe_open(str(path), framework="pt", device=device)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise BankMismatchError(
            f"{path} is not a readable safetensors file ({error}); the bank is damaged or incomplete: rebuild it."
        ) from None


def _shard_metadata(path: Path) -> dict[str, str]:
    with _open(path) as handle:
        return handle.metadata() or {}


def _info_row(info: BlockInfo) -> list[int]:
    return [
        info.document,
        info.token_start,
        *(info.char_span or (-1, -1)),
        info.num_tokens,
        info.num_entries,
        info.num_bytes,
    ]


def _digests(row: list) -> list[int]:
    """The digests a shard records for a block (after its index and info), as ints."""
    return [int(digest, 16) for digest in row[8:]]


def _row_info(row: Sequence[int]) -> BlockInfo:
    document, start, char_start, char_end, tokens, entries, size = row
    return BlockInfo(document, start, None if char_start < 0 else (char_start, char_end), tokens, entries, size)


def stored_names(index: int, key: str = KEY) -> dict[str, str]:
    """The name each field of block `index` is stored under (`key` names them: `{index}.{field}`)."""
    return {field: key.format(index=index, field=field) for field in FIELDS}


def block_tensors(block: MemoryBlock, index: int, key: str = KEY) -> dict[str, torch.Tensor]:
    """The tensors `block` is stored as, named after its place `index` in the bank: quantized KV as its packed
    codes plus `.scales` and `.zeros` beside them."""
    tensors = {}
    for name, stored in stored_names(index, key).items():
        tensor = getattr(block, name)
        if tensor is None:
            continue
        if isinstance(tensor, Quantized):
            tensors.update({stored: tensor.data, f"{stored}.scales": tensor.scales, f"{stored}.zeros": tensor.zeros})
        else:
            tensors[stored] = tensor.to(torch.int32) if name == "token_ids" else tensor
    return {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}


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


def write_index(directory: str | Path, parts: Sequence[BankPart], prefix: Prefix, provenance: Provenance) -> None:
    """Write `prefix.safetensors`, the block table and the one `bank.json` listing every writer's blocks, sealed
    (the index last, atomically, so a folder with an index is a complete bank)."""
    directory = Path(directory)
    shards, shard_ranks, rows = merge_parts(parts)
    prefix_tensors, table_tensors = prefix.tensors(), _table_tensors(rows)
    save_file(prefix_tensors, str(directory / PREFIX_FILE))
    save_file(table_tensors, str(directory / TABLE_FILE))
    listed = [{**shard, "rank": rank} for shard, rank in zip(shards, shard_ranks)]
    kv = next((part.kv for part in parts if part.kv is not None), None)
    index = _index(provenance, kv, PREFIX_FILE, listed, len(rows))
    index["seal"] = seal(index, {**prefix_tensors, **table_tensors})
    partial = directory / f"{INDEX}.partial"
    partial.write_text(json.dumps(index), encoding="utf-8")
    os.replace(partial, directory / INDEX)


def _table_tensors(rows: Sequence[Entry]) -> dict[str, torch.Tensor]:
    """The block table and the blocks' digests, as stored."""
    table = BlockTable.of([entry.info for entry in rows], [entry.shard for entry in rows])
    digests = torch.tensor([entry.digests for entry in rows], dtype=torch.int64).reshape(-1, len(FIELDS))
    return {TABLE_TENSOR: table.table, DIGESTS_TENSOR: digests}


def write_file(
    path: str | Path,
    blocks: Iterable[MemoryBlock],
    prefix: Prefix,
    provenance: Provenance,
    kv: dict[str, Any] | None,
    derived: dict[str, tuple[dict[str, torch.Tensor], dict]],
) -> None:
    """Write a whole bank as one safetensors file, its sealed index in the metadata (no pickle)."""
    prefix_tensors = prefix.tensors()
    tensors = dict(prefix_tensors)
    rows = []
    for i, block in enumerate(blocks):
        stored = block_tensors(block, i)
        tensors.update(stored)
        rows.append(Entry(block.info, 0, field_digests(stored, stored_names(i))))
    table_tensors = _table_tensors(rows)
    tensors.update(table_tensors)
    for name, (named, _) in derived.items():
        tensors.update({f"derived.{name}.{key}": value.contiguous().cpu() for key, value in named.items()})
    index = _index(provenance, kv, "", [{"file": "", "rank": 0}], len(rows))
    index["seal"] = seal(index, {**prefix_tensors, **table_tensors})
    index["derived"] = {name: meta for name, (_, meta) in derived.items()}
    save_file(
        tensors,
        str(path),
        metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION), "index": json.dumps(index)},
    )


def kv_layout(block: MemoryBlock) -> dict[str, Any] | None:
    """The dtype (or bits) and per-entry shape of a block's KV, as the index records them (None without KV)."""
    if block.keys is None:
        return None
    keys = block.keys
    dtype = f"int{keys.bits}" if isinstance(keys, Quantized) else str(keys.dtype).removeprefix("torch.")
    return {"dtype": dtype, "kv_heads": int(keys.shape[1]), "head_dim": int(keys.shape[-1])}


def _index(
    provenance: Provenance, kv: dict[str, Any] | None, prefix_file: str, shards: list[dict], blocks: int
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "provenance": provenance.to_dict(),
        "kv": kv,
        "prefix": prefix_file,
        "shards": shards,
        "blocks": blocks,
    }


class ShardStore:
    """The blocks of a bank on disk, loaded from their shard on each access (never cached).

    `files[s]` is shard `s`; `key` names a block's tensors (`{index}.{field}`). A sealed bank (format 3)
    has `digests` `[blocks, 4]`, checked whenever a block or its token ids are read, and `seal`, which the
    gate indexes kept with it carry. Gate indexes built for the bank are read from, and written to, the
    folder beside it (`derived-NAME.safetensors`); a single-file bank keeps the ones it was saved with and,
    in this process, those built since.
    """

    def __init__(
        self,
        root: Path,
        files: list[Path],
        infos: BlockTable,
        compression: CompressionConfig | None = None,
        key: str = KEY,
        derived: dict[str, tuple[dict[str, torch.Tensor], dict]] | None = None,
        digests: torch.Tensor | None = None,
        seal: str | None = None,
        shards: list[dict[str, Any]] | None = None,
    ) -> None:
        self.root = root
        self.files = files
        self.shards = shards or []  # the index's record of each shard (its size), in a sealed folder
        self.infos = infos
        self.shard_of = infos.column("shard").tolist()
        self.compression = compression  # how its KV was quantized, to read it back
        self.key = key
        self.digests = digests
        self.seal = seal
        self.device = torch.device("cpu")
        self.memo = Memo()
        self._derived = dict(derived or {})
        self._lock = threading.Lock()
        self._checked: set[int] = set()  # shards whose recorded blocks matched the table
        self._sharded = digests is not None and root.is_dir()  # a sealed folder, whose shards record their blocks

    def __len__(self) -> int:
        return len(self.infos)

    def check_shard(self, shard: int) -> None:
        """Refuse shard `shard` (once per process) unless it records the very blocks, with the very digests, that
        the sealed table gives it: another bank's shard of the same size is caught before any block is used."""
        if not self._sharded or shard in self._checked:
            return
        path = self.files[shard]
        rows = json.loads(_shard_metadata(path).get("blocks", "[]"))
        recorded = torch.tensor([[row[0], *_digests(row)] for row in rows], dtype=torch.int64)
        listed = (self.infos.column("shard") == shard).nonzero().flatten()
        expected = torch.cat([listed[:, None], self.digests[listed]], dim=1)
        if recorded.shape != expected.shape or not torch.equal(recorded[torch.argsort(recorded[:, 0])], expected):
            raise BankMismatchError(
                f"{path} holds other blocks than this bank's index lists: it is another bank's "
                "shard or was damaged. Rebuild the bank."
            )
        with self._lock:
            self._checked.add(shard)

    def load(self, index: int) -> MemoryBlock:
        info = self.infos[index]
        self.check_shard(self.shard_of[index])
        names = stored_names(index, self.key)
        with _open(self.files[self.shard_of[index]], str(self.device)) as handle:
            present = set(handle.keys())
            stored = {
                name + part: handle.get_tensor(name + part)
                for name in names.values()
                for part in QUANTIZED_PARTS
                if name + part in present
            }
        if names["token_ids"] not in stored:
            raise BankMismatchError(f"{self.files[self.shard_of[index]]} lacks block {index}: the bank is damaged.")
        self._check_digests(index, field_digests(stored, names), FIELDS)
        tensors = {f: self._field(stored, names[f], f) for f in FIELDS}
        tensors["token_ids"] = self._checked_ids(index, tensors["token_ids"])
        return MemoryBlock(**tensors, document=info.document, token_start=info.token_start, char_span=info.char_span)

    def _field(self, stored: dict[str, torch.Tensor], name: str, field: str) -> torch.Tensor | Quantized | None:
        """One stored field of a block: a tensor, a quantized one (codes, scales, zeros), or None."""
        if name not in stored:
            return None
        if f"{name}.scales" not in stored:
            return stored[name]
        bits, group = self.compression.bits, self.compression.group
        return Quantized(
            stored[name],
            stored[f"{name}.scales"],
            stored[f"{name}.zeros"],
            bits,
            group,
            TOKENS if field == "keys" else CHANNELS,
        )

    def token_ids(self, index: int) -> torch.Tensor:
        self.check_shard(self.shard_of[index])
        with _open(self.files[self.shard_of[index]]) as handle:
            ids = handle.get_tensor(stored_names(index, self.key)["token_ids"])
        self._check_digests(index, [tensor_digest([ids])], FIELDS[:1])
        return self._checked_ids(index, ids)

    def _check_digests(self, index: int, found: list[int], fields: tuple[str, ...]) -> None:
        """Refuse block `index` unless what was read of its `fields` is what was written (a sealed bank)."""
        if self.digests is None:
            return
        expected = self.digests[index, : len(fields)].tolist()
        wrong = [field for field, a, b in zip(fields, found, expected) if a != b]
        if wrong:
            raise BankMismatchError(
                f"Block {index}'s {', '.join(wrong)} in {self.files[self.shard_of[index]]} are not what was written "
                "(their digest differs from the bank's table): the file is damaged or was replaced. Rebuild the bank."
            )

    def _checked_ids(self, index: int, ids: torch.Tensor) -> torch.Tensor:
        """Block `index`'s stored token ids as int64, refused unless they are integers, as many as the block
        table says the block holds."""
        if (
            ids.is_floating_point()
            or ids.dtype == torch.bool
            or ids.dim() != 1
            or ids.numel() != self.infos[index].num_tokens
        ):
            raise BankMismatchError(
                f"Block {index} in {self.files[self.shard_of[index]]} holds {ids.numel()} token ids of dtype "
                f"{ids.dtype}, where the bank's table lists {self.infos[index].num_tokens} integer ids: the bank is "
                "damaged or mixes another bank's files."
            )
        return ids.long()

    def verify(self, show_progress: bool = False) -> None:
        """Read the whole bank back, every block against its digests (which cover every byte of its tensors);
        raise `BankMismatchError` at the first difference."""
        for shard in range(len(self.files)):
            self.check_shard(shard)
        for index in tqdm(range(len(self)), desc="Verifying", unit="block", disable=not show_progress):
            self.load(index)

    def derived(self, name: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """A gate index stored with the bank: its tensors and metadata, or None if none was stored (or the one
        beside it was built for another bank)."""
        with self._lock:
            if name in self._derived:
                return self._derived[name]
        path = self.root / f"derived-{name}.safetensors"
        if not self.root.is_dir() or not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = json.loads((handle.metadata() or {}).get("metadata", "{}"))
            tensors = load_file(str(path))
        except Exception as error:  # noqa: BLE001 - a damaged cache of the bank: built again, not read
            logger.warning("%s is damaged (%s); it is rebuilt.", path, error)
            return None
        if self.seal is not None and metadata.get("bank") != self.seal:
            logger.warning("%s was built for another bank; it is rebuilt.", path)
            return None
        found = (tensors, metadata)
        with self._lock:
            self._derived[name] = found
        return found

    def keep_derived(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict, persist: bool = True) -> None:
        """Keep a gate index with the bank: held in memory for this process and, with `persist`, written beside
        a folder's shards (atomically; a single-file bank writes it into the file when it is saved)."""
        with self._lock:
            self._derived[name] = (tensors, metadata)
        if not persist or not self.root.is_dir():
            return
        path = self.root / f"derived-{name}.safetensors"
        partial = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.partial")
        try:
            save_file(
                {k: v.contiguous().cpu() for k, v in tensors.items()},
                str(partial),
                metadata={"metadata": json.dumps({**metadata, "bank": self.seal})},
            )
            os.replace(partial, path)
        except OSError:  # a read-only bank still answers; the index is rebuilt in the next process
            partial.unlink(missing_ok=True)

    def derived_items(self) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
        with self._lock:
            return dict(self._derived)


def read_bank(path: str | Path) -> tuple[ShardStore, Prefix, Provenance, dict[str, Any] | None]:
    """Open the bank at `path` (a folder or a `.safetensors` file, this format or an earlier one): its blocks
    stay on disk; returns the store, the prefix, how it was built and its KV layout.

    A sealed bank (format 3) is refused, naming the file, when its index, table or prefix differ from what
    was written, when a shard is missing, of another size, or holds another bank's blocks."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"No memory bank at {path}: it is neither a bank folder nor a .safetensors file.")
    metadata = _shard_metadata(path)
    if metadata.get("format") != FORMAT:
        raise BankMismatchError(f"{path} is not a compressmem memory bank (no bank metadata in the file).")
    version = _version(metadata.get("format_version"), path)
    if version == 1:
        return _read_legacy_file(path, metadata)
    index = _parse_json(metadata.get("index"), path)
    tensors = _tensors(path, ("prefix_ids", "prefix_keys", "prefix_values", TABLE_TENSOR, DIGESTS_TENSOR))
    _check_seal(index, tensors, version, path)
    derived = _derived_from_file(path, index.get("derived", {}))
    store, provenance, kv = _store(path, [path], index, tensors, derived)
    return store, Prefix.from_tensors(tensors), provenance, kv


def _read_folder(directory: Path) -> tuple[ShardStore, Prefix, Provenance, dict[str, Any] | None]:
    path = directory / INDEX
    if not path.is_file():
        shards = interrupted_shards(directory)
        if shards:
            raise BankMismatchError(
                f"{directory} is an incomplete bank: its compression was interrupted after {len(shards)} shards, "
                f"before {INDEX} was written. Run the same compress_stream into it again to resume."
            )
        raise BankMismatchError(f"{directory} is not a compressmem bank folder ({INDEX} is missing).")
    index = _parse_json(path.read_text(encoding="utf-8"), path)
    if index.get("format") != FORMAT:
        raise BankMismatchError(f"{path} is not a compressmem bank index.")
    version = _version(index.get("format_version"), directory)
    prefix_tensors = _tensors(directory / PREFIX_FILE, ("prefix_ids", "prefix_keys", "prefix_values"))
    prefix = Prefix.from_tensors(prefix_tensors)
    if version == 1:
        return _legacy_folder_store(directory, index, prefix)
    files = [
        _inside(directory, shard.get("file") if isinstance(shard, dict) else None) for shard in index.get("shards", [])
    ]
    tensors = (
        _tensors(directory / TABLE_FILE, (TABLE_TENSOR, DIGESTS_TENSOR)) if (directory / TABLE_FILE).is_file() else {}
    )
    _check_seal(index, {**prefix_tensors, **tensors}, version, path)
    store, provenance, kv = _store(directory, files, index, tensors, None)
    _check_shards(store)
    return store, prefix, provenance, kv


def _check_seal(index: dict[str, Any], tensors: dict[str, torch.Tensor], version: int, where: Path) -> None:
    """Refuse an index, block table or prefix edited or damaged since the bank was sealed (format 3 on)."""
    if version >= 3 and index.get("seal") != seal(index, tensors):
        raise BankMismatchError(
            f"{where} does not match its seal: the bank's index, block table or prefix was edited or damaged "
            "after it was written (e.g. layers reordered, blocks cut or repeated, another bank's table). "
            "Rebuild the bank."
        )


def _check_shards(store: ShardStore) -> None:
    """Refuse shards of another size than written (a sealed bank); which blocks each holds is checked when one of
    its blocks is first read (`ShardStore.check_shard`), so opening a bank of any size stays fast."""
    if store.digests is None:
        return
    for path, shard in zip(store.files, store.shards):
        if path.stat().st_size != shard.get("bytes"):
            raise BankMismatchError(
                f"{path} holds {path.stat().st_size} bytes where the bank's index lists "
                f"{shard.get('bytes')}: the shard is damaged or was replaced. Rebuild the bank."
            )


def _store(
    root: Path, files: list[Path], index: dict[str, Any], tensors: dict[str, torch.Tensor], derived: dict | None
) -> tuple[ShardStore, Provenance, dict[str, Any] | None]:
    provenance = Provenance.from_dict(index["provenance"])
    kv = index.get("kv")
    table = tensors.get(TABLE_TENSOR)
    if table is None or table.dim() != 2 or table.shape[0] != index.get("blocks"):
        raise BankMismatchError(
            f"The block table of {root} is missing or does not list the {index.get('blocks')} "
            "blocks its index counts: the bank is damaged."
        )
    infos = BlockTable(table)
    shards = infos.column("shard")
    if len(infos) and not bool(((shards >= 0) & (shards < len(files))).all()):
        raise BankMismatchError(f"The block table of {root} names shards outside the {len(files)} its index lists.")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise BankMismatchError(
            f"{root} lacks {len(missing)} of its {len(files)} shards ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): the bank is incomplete."
        )
    digests = tensors.get(DIGESTS_TENSOR)
    shards = [shard for shard in index["shards"] if isinstance(shard, dict)]
    return (
        ShardStore(
            root,
            files,
            infos,
            provenance.compression,
            derived=derived,
            digests=digests,
            seal=index.get("seal"),
            shards=shards,
        ),
        provenance,
        kv,
    )


def _inside(directory: Path, name: Any) -> Path:
    """`directory / name`, refusing anything but the name of a file in the folder itself."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise BankMismatchError(
            f"The index of {directory} names the file {name!r}, which is not inside the bank "
            "folder: the bank is damaged or was tampered with."
        )
    return directory / name


def _version(value: Any, where: Path) -> int:
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise BankMismatchError(f"{where} has no valid bank format version ({value!r}); it is damaged.") from None
    if version > FORMAT_VERSION:
        raise BankMismatchError(
            f"{where} uses bank format {version}; this compressmem reads up to {FORMAT_VERSION}. Upgrade compressmem."
        )
    return version


def _parse_json(text: Any, where: Path) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        raise BankMismatchError(f"The bank index of {where} is not valid JSON; the bank is damaged.") from None
    if not isinstance(data, dict):
        raise BankMismatchError(f"The bank index of {where} is not a JSON object; the bank is damaged.")
    return data


def _tensors(path: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    with _open(path) as handle:
        present = set(handle.keys())
        return {name: handle.get_tensor(name) for name in names if name in present}


def _derived_from_file(path: Path, metadata: dict[str, dict]) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
    derived: dict[str, tuple[dict[str, torch.Tensor], dict]] = {}
    with _open(path) as handle:
        names = list(handle.keys())
        for name, meta in metadata.items():
            start = f"derived.{name}."
            derived[name] = (
                {key[len(start) :]: handle.get_tensor(key) for key in names if key.startswith(start)},
                meta,
            )
    return derived


def _legacy_provenance(index: dict[str, Any], has_values: bool) -> Provenance:
    """A release-0.1 bank's settings as a `Provenance`: a compressor is recorded only if KV was kept."""
    settings = index["settings"]
    layers = tuple(index["layers"])
    compression = None
    if layers:
        method = settings["compressor"]
        compression = CompressionConfig(
            method,
            None if method == "none" else settings["ratio"],
            settings.get("score") if method == "select" else None,
        )
    return Provenance(
        BaseFingerprint.from_dict(index["fingerprint"]),
        int(settings["chunk_size"]),
        compression,
        None,
        layers,
        has_values,
    )


_ITEMSIZES = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4}
_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def _legacy_layout(files: list[Path], key: str, shard_of: list[int]) -> tuple[list[tuple[int, int, int]], dict | None]:
    """Per block (tokens, entries, bytes as stored), read from the shards' headers, and the KV layout."""
    sizes: list[tuple[int, int, int]] = []
    kv = None
    handles = {}
    try:
        for index, shard in enumerate(shard_of):
            if shard not in handles:
                handles[shard] = _open(files[shard])
            handle = handles[shard]
            present = set(handle.keys())
            names = stored_names(index, key)
            slices = {f: handle.get_slice(name) for f, name in names.items() if name in present}
            size = sum(math.prod(s.get_shape()) * _ITEMSIZES[s.get_dtype()] for s in slices.values())
            shape = slices["keys"].get_shape() if "keys" in slices else None
            sizes.append((slices["token_ids"].get_shape()[0], 0 if shape is None else shape[-2], size))
            if kv is None and shape is not None:
                kv = {"dtype": _DTYPE_NAMES[slices["keys"].get_dtype()], "kv_heads": shape[1], "head_dim": shape[-1]}
    finally:
        handles.clear()
    return sizes, kv


def _legacy_folder_store(directory: Path, index: dict[str, Any], prefix: Prefix):
    files = [_inside(directory, name) for name in index["shards"]]
    spans = index["blocks"]
    shard_of = [shard for _, _, _, shard in spans]
    provenance = _legacy_provenance(index, prefix.values is not None)
    sizes, kv = _legacy_layout(files, "{index}.{field}", shard_of)
    infos = [
        BlockInfo(document, start, tuple(span) if span else None, *size)
        for (document, start, span, _), size in zip(spans, sizes)
    ]
    table = BlockTable.of(infos, shard_of)
    return ShardStore(directory, files, table, provenance.compression), prefix, provenance, kv


def _read_legacy_file(path: Path, metadata: dict[str, str]):
    spans = json.loads(metadata["spans"])
    key = "blocks.{index}.{field}"
    prefix = Prefix.from_tensors(_tensors(path, ("prefix_ids", "prefix_keys", "prefix_values")))
    index = {
        "settings": json.loads(metadata["settings"]),
        "layers": json.loads(metadata["layers"]),
        "fingerprint": json.loads(metadata["fingerprint"]),
    }
    provenance = _legacy_provenance(index, prefix.values is not None)
    shard_of = [0] * len(spans)
    sizes, kv = _legacy_layout([path], key, shard_of)
    infos = [
        BlockInfo(document, start, tuple(span) if span else None, *size)
        for (document, start, span), size in zip(spans, sizes)
    ]
    store = ShardStore(path, [path], BlockTable.of(infos), provenance.compression, key=key)
    return store, prefix, provenance, kv
