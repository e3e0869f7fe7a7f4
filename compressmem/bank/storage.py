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
shards, one index lists them all. Banks written by release 0.1 (format 1, a folder or a file) are
read too.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..config import CompressionConfig
from ..hf.fingerprint import BaseFingerprint
from ..quantize import CHANNELS, TOKENS, Quantized
from .block import BlockInfo, BlockTable, MemoryBlock
from .memo import Memo
from .provenance import BankMismatchError, Provenance

INDEX = "bank.json"
PREFIX_FILE = "prefix.safetensors"
TABLE_FILE = "table.safetensors"
TABLE_TENSOR = "block_table"
FORMAT = "compressmem.MemoryBank"
FORMAT_VERSION = 2
FIELDS = ("token_ids", "keys", "values", "positions")


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
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "Prefix":
        return cls(tensors["prefix_ids"].long(), tensors.get("prefix_keys"), tensors.get("prefix_values"))


@dataclass
class BankPart:
    """What one writer put in a bank folder: its shards and, per block it wrote, the block's info and shard
    (an index into this part's own `shards`)."""

    rank: int
    shards: list[str] = field(default_factory=list)
    blocks: dict[int, tuple[BlockInfo, int]] = field(default_factory=dict)


class BankWriter:
    """Write blocks to shards of a bank folder, `shard_blocks` blocks a shard.

    The only writer of a folder calls `finish()` and then `write_index`; with several writers on one
    folder (one per process: `rank` of `world_size`), each calls `finish()` and one of them merges the
    parts with `write_index`. Writer `rank`'s k-th shard is number `k * world_size + rank`, so the
    writers' file names never collide.
    """

    def __init__(self, directory: str | Path, shard_blocks: int = 256, rank: int = 0, world_size: int = 1) -> None:
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
        self.part = BankPart(rank)
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_blocks = 0

    def add(self, block: MemoryBlock, index: int | None = None) -> None:
        """Queue `block` as the document's block number `index` (default: after the last one added)."""
        index = len(self.part.blocks) if index is None else index
        if index in self.part.blocks:
            raise ValueError(f"block {index} was already written to {self.directory}.")
        self._pending.update(block_tensors(block, index))
        self._pending_blocks += 1
        self.part.blocks[index] = (block.info, len(self.part.shards))
        if self._pending_blocks == self.shard_blocks:
            self._flush()

    def finish(self) -> BankPart:
        """Write the last shard; the part, for `write_index`."""
        self._flush()
        return self.part

    def _flush(self) -> None:
        if not self._pending:
            return
        number = len(self.part.shards) * self.world_size + self.part.rank
        name = f"blocks-{number:05d}.safetensors"
        save_file(self._pending, str(self.directory / name))
        self.part.shards.append(name)
        self._pending = {}
        self._pending_blocks = 0


def block_tensors(block: MemoryBlock, index: int, key: str = "{index}.{field}") -> dict[str, torch.Tensor]:
    """The tensors `block` is stored as, named after its place `index` in the bank: quantized KV as its packed
    codes plus `.scales` and `.zeros` beside them."""
    tensors = {}
    for name in FIELDS:
        tensor = getattr(block, name)
        if tensor is None:
            continue
        stored = key.format(index=index, field=name)
        if isinstance(tensor, Quantized):
            tensors.update({stored: tensor.data, f"{stored}.scales": tensor.scales, f"{stored}.zeros": tensor.zeros})
        else:
            tensors[stored] = tensor.to(torch.int32) if name == "token_ids" else tensor
    return {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}


def merge_parts(parts: Sequence[BankPart]) -> tuple[list[str], list[int], list[tuple[BlockInfo, int]]]:
    """The writers' parts as one index: every shard with the rank that wrote it, every block in document order.

    Raises `ValueError` when the parts do not hold blocks `0..n-1` exactly once (a writer missed or
    repeated some).
    """
    shards: list[str] = []
    shard_ranks: list[int] = []
    rows: dict[int, tuple[BlockInfo, int]] = {}
    for part in sorted(parts, key=lambda p: p.rank):
        repeated = sorted(rows.keys() & part.blocks.keys())
        if repeated:
            raise ValueError(f"blocks {repeated[:5]} were written by more than one process.")
        rows.update({i: (info, shard + len(shards)) for i, (info, shard) in part.blocks.items()})
        shards += part.shards
        shard_ranks += [part.rank] * len(part.shards)
    missing = sorted(set(range(len(rows))) - rows.keys())
    if missing:
        raise ValueError(f"blocks {missing[:5]} of the document were written by no process.")
    return shards, shard_ranks, [rows[i] for i in range(len(rows))]


def write_index(directory: str | Path, parts: Sequence[BankPart], prefix: Prefix, provenance: Provenance,
                kv: dict[str, Any] | None) -> None:
    """Write `prefix.safetensors` and the one `bank.json` listing every writer's blocks (the index last,
    atomically, so a folder with an index is a complete bank)."""
    directory = Path(directory)
    shards, shard_ranks, rows = merge_parts(parts)
    save_file(prefix.tensors(), str(directory / PREFIX_FILE))
    table = BlockTable.of([info for info, _ in rows], [shard for _, shard in rows])
    save_file({TABLE_TENSOR: table.table}, str(directory / TABLE_FILE))
    listed = [{"file": name, "rank": rank} for name, rank in zip(shards, shard_ranks)]
    index = _index(provenance, kv, PREFIX_FILE, listed, len(table))
    partial = directory / f"{INDEX}.partial"
    partial.write_text(json.dumps(index), encoding="utf-8")
    os.replace(partial, directory / INDEX)


def write_file(path: str | Path, blocks: Iterable[MemoryBlock], prefix: Prefix, provenance: Provenance,
               kv: dict[str, Any] | None, derived: dict[str, tuple[dict[str, torch.Tensor], dict]]) -> None:
    """Write a whole bank as one safetensors file, its index in the metadata (no pickle)."""
    tensors = prefix.tensors()
    infos = []
    for i, block in enumerate(blocks):
        tensors.update(block_tensors(block, i))
        infos.append(block.info)
    tensors[TABLE_TENSOR] = BlockTable.of(infos).table
    for name, (named, _) in derived.items():
        tensors.update({f"derived.{name}.{key}": value.contiguous().cpu() for key, value in named.items()})
    index = _index(provenance, kv, "", [{"file": "", "rank": 0}], len(infos))
    index["derived"] = {name: meta for name, (_, meta) in derived.items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION),
                                            "index": json.dumps(index)})


def kv_layout(block: MemoryBlock) -> dict[str, Any] | None:
    """The dtype (or bits) and per-entry shape of a block's KV, as the index records them (None without KV)."""
    if block.keys is None:
        return None
    keys = block.keys
    dtype = f"int{keys.bits}" if isinstance(keys, Quantized) else str(keys.dtype).removeprefix("torch.")
    return {"dtype": dtype, "kv_heads": int(keys.shape[1]), "head_dim": int(keys.shape[-1])}


def _index(provenance: Provenance, kv: dict[str, Any] | None, prefix_file: str, shards: list[dict],
           blocks: int) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "provenance": provenance.to_dict(), "kv": kv,
            "prefix": prefix_file, "shards": shards, "blocks": blocks}


class ShardStore:
    """The blocks of a bank on disk, loaded from their shard on each access (never cached).

    `files[s]` is shard `s`; `key` names a block's tensors (`{index}.{field}`). Gate indexes built for
    the bank are read from, and written to, the folder beside it (`derived-NAME.safetensors`); a
    single-file bank keeps the ones it was saved with and, in this process, those built since.
    """

    def __init__(self, root: Path, files: list[Path], infos: BlockTable, compression: CompressionConfig | None = None,
                 key: str = "{index}.{field}",
                 derived: dict[str, tuple[dict[str, torch.Tensor], dict]] | None = None) -> None:
        self.root = root
        self.files = files
        self.infos = infos
        self.shard_of = infos.column("shard").tolist()
        self.compression = compression  # how its KV was quantized, to read it back
        self.key = key
        self.device = torch.device("cpu")
        self.memo = Memo()
        self._derived = dict(derived or {})
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.infos)

    def load(self, index: int) -> MemoryBlock:
        info = self.infos[index]
        with safe_open(str(self.files[self.shard_of[index]]), framework="pt", device=str(self.device)) as handle:
            names = set(handle.keys())
            tensors = {f: self._field(handle, names, self.key.format(index=index, field=f), f) for f in FIELDS}
        if tensors["token_ids"] is None:
            raise BankMismatchError(f"{self.files[self.shard_of[index]]} lacks block {index}: the bank is damaged.")
        tensors["token_ids"] = self._checked_ids(index, tensors["token_ids"])
        return MemoryBlock(**tensors, document=info.document, token_start=info.token_start, char_span=info.char_span)

    def _field(self, handle, names: set[str], name: str, field: str) -> torch.Tensor | Quantized | None:
        """One stored field of a block: a tensor, a quantized one (codes, scales, zeros), or None."""
        if name not in names:
            return None
        if f"{name}.scales" not in names:
            return handle.get_tensor(name)
        bits, group = self.compression.bits, self.compression.group
        return Quantized(handle.get_tensor(name), handle.get_tensor(f"{name}.scales"),
                         handle.get_tensor(f"{name}.zeros"), bits, group, TOKENS if field == "keys" else CHANNELS)

    def token_ids(self, index: int) -> torch.Tensor:
        with safe_open(str(self.files[self.shard_of[index]]), framework="pt") as handle:
            return self._checked_ids(index, handle.get_tensor(self.key.format(index=index, field="token_ids")))

    def _checked_ids(self, index: int, ids: torch.Tensor) -> torch.Tensor:
        """Block `index`'s stored token ids as int64, refused unless they are integers, as many as the block
        table says the block holds."""
        if ids.is_floating_point() or ids.dtype == torch.bool or ids.dim() != 1 \
                or ids.numel() != self.infos[index].num_tokens:
            raise BankMismatchError(
                f"Block {index} in {self.files[self.shard_of[index]]} holds {ids.numel()} token ids of dtype "
                f"{ids.dtype}, where the bank's table lists {self.infos[index].num_tokens} integer ids: the bank is "
                "damaged or mixes another bank's files.")
        return ids.long()

    def derived(self, name: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """A gate index stored with the bank: its tensors and metadata, or None if none was stored."""
        with self._lock:
            if name in self._derived:
                return self._derived[name]
        path = self.root / f"derived-{name}.safetensors"
        if not self.root.is_dir() or not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get("metadata", "{}"))
        found = (load_file(str(path)), metadata)
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
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(partial),
                      metadata={"metadata": json.dumps(metadata)})
            os.replace(partial, path)
        except OSError:  # a read-only bank still answers; the index is rebuilt in the next process
            partial.unlink(missing_ok=True)

    def derived_items(self) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
        with self._lock:
            return dict(self._derived)


def read_bank(path: str | Path) -> tuple[ShardStore, Prefix, Provenance, dict[str, Any] | None]:
    """Open the bank at `path` (a folder or a `.safetensors` file, this format or release 0.1's): its blocks
    stay on disk; returns the store, the prefix, how it was built and its KV layout."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"No memory bank at {path}: it is neither a bank folder nor a .safetensors file.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for files that are not safetensors
        raise BankMismatchError(f"{path} is not a compressmem memory bank ({error}).") from None
    if metadata.get("format") != FORMAT:
        raise BankMismatchError(f"{path} is not a compressmem memory bank (no bank metadata in the file).")
    version = _version(metadata.get("format_version"), path)
    if version == 1:
        return _read_legacy_file(path, metadata)
    index = _parse_json(metadata.get("index"), path)
    tensors = _tensors(path, ("prefix_ids", "prefix_keys", "prefix_values", TABLE_TENSOR))
    derived = _derived_from_file(path, index.get("derived", {}))
    store, provenance, kv = _store(path, [path], index, tensors.get(TABLE_TENSOR), derived)
    return store, Prefix.from_tensors(tensors), provenance, kv


def _read_folder(directory: Path) -> tuple[ShardStore, Prefix, Provenance, dict[str, Any] | None]:
    path = directory / INDEX
    if not path.is_file():
        raise BankMismatchError(f"{directory} is not a compressmem bank folder ({INDEX} is missing).")
    index = _parse_json(path.read_text(encoding="utf-8"), path)
    if index.get("format") != FORMAT:
        raise BankMismatchError(f"{path} is not a compressmem bank index.")
    version = _version(index.get("format_version"), directory)
    prefix = Prefix.from_tensors(load_file(str(directory / PREFIX_FILE)))
    if version == 1:
        return _legacy_folder_store(directory, index, prefix)
    files = [_inside(directory, shard["file"]) for shard in index["shards"]]
    table = _tensors(directory / TABLE_FILE, (TABLE_TENSOR,)).get(TABLE_TENSOR) if (directory / TABLE_FILE).is_file() \
        else None
    store, provenance, kv = _store(directory, files, index, table, None)
    return store, prefix, provenance, kv


def _store(root: Path, files: list[Path], index: dict[str, Any], table: torch.Tensor | None,
           derived: dict | None) -> tuple[ShardStore, Provenance, dict[str, Any] | None]:
    provenance = Provenance.from_dict(index["provenance"])
    kv = index.get("kv")
    if table is None or table.dim() != 2 or table.shape[0] != index.get("blocks"):
        raise BankMismatchError(f"The block table of {root} is missing or does not list the {index.get('blocks')} "
                                "blocks its index counts: the bank is damaged.")
    infos = BlockTable(table)
    shards = infos.column("shard")
    if len(infos) and not bool(((shards >= 0) & (shards < len(files))).all()):
        raise BankMismatchError(f"The block table of {root} names shards outside the {len(files)} its index lists.")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise BankMismatchError(f"{root} lacks {len(missing)} of its {len(files)} shards ({', '.join(missing[:3])}"
                                f"{', ...' if len(missing) > 3 else ''}): the bank is incomplete.")
    return ShardStore(root, files, infos, provenance.compression, derived=derived), provenance, kv


def _inside(directory: Path, name: str) -> Path:
    """`directory / name`, refusing names that would leave the folder."""
    path = (directory / name).resolve()
    if not isinstance(name, str) or path.parent != directory.resolve():
        raise BankMismatchError(f"The index of {directory} names the file {name!r}, which is not inside the bank "
                                "folder: the bank is damaged or was tampered with.")
    return path


def _version(value: Any, where: Path) -> int:
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise BankMismatchError(f"{where} has no valid bank format version ({value!r}); it is damaged.") from None
    if version > FORMAT_VERSION:
        raise BankMismatchError(f"{where} uses bank format {version}; this compressmem reads up to {FORMAT_VERSION}. "
                                "Upgrade compressmem.")
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
    with safe_open(str(path), framework="pt") as handle:
        present = set(handle.keys())
        return {name: handle.get_tensor(name) for name in names if name in present}


def _derived_from_file(path: Path, metadata: dict[str, dict]) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
    derived: dict[str, tuple[dict[str, torch.Tensor], dict]] = {}
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
        for name, meta in metadata.items():
            start = f"derived.{name}."
            derived[name] = ({key[len(start):]: handle.get_tensor(key) for key in names if key.startswith(start)}, meta)
    return derived


def _legacy_provenance(index: dict[str, Any], has_values: bool) -> Provenance:
    """A release-0.1 bank's settings as a `Provenance`: a compressor is recorded only if KV was kept."""
    settings = index["settings"]
    layers = tuple(index["layers"])
    compression = None
    if layers:
        method = settings["compressor"]
        compression = CompressionConfig(method, None if method == "none" else settings["ratio"],
                                        settings.get("score") if method == "select" else None)
    return Provenance(BaseFingerprint.from_dict(index["fingerprint"]), int(settings["chunk_size"]), compression, None,
                      layers, has_values)


_ITEMSIZES = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4}
_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def _legacy_layout(files: list[Path], key: str,
                   shard_of: list[int]) -> tuple[list[tuple[int, int, int]], dict | None]:
    """Per block (tokens, entries, bytes as stored), read from the shards' headers, and the KV layout."""
    sizes: list[tuple[int, int, int]] = []
    kv = None
    handles = {}
    try:
        for index, shard in enumerate(shard_of):
            if shard not in handles:
                handles[shard] = safe_open(str(files[shard]), framework="pt")
            handle = handles[shard]
            present = set(handle.keys())
            names = {f: key.format(index=index, field=f) for f in FIELDS}
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
    infos = [BlockInfo(document, start, tuple(span) if span else None, *size)
             for (document, start, span, _), size in zip(spans, sizes)]
    table = BlockTable.of(infos, shard_of)
    return ShardStore(directory, files, table, provenance.compression), prefix, provenance, kv


def _read_legacy_file(path: Path, metadata: dict[str, str]):
    spans = json.loads(metadata["spans"])
    key = "blocks.{index}.{field}"
    prefix = Prefix.from_tensors(_tensors(path, ("prefix_ids", "prefix_keys", "prefix_values")))
    index = {"settings": json.loads(metadata["settings"]), "layers": json.loads(metadata["layers"]),
             "fingerprint": json.loads(metadata["fingerprint"])}
    provenance = _legacy_provenance(index, prefix.values is not None)
    shard_of = [0] * len(spans)
    sizes, kv = _legacy_layout([path], key, shard_of)
    infos = [BlockInfo(document, start, tuple(span) if span else None, *size)
             for (document, start, span), size in zip(spans, sizes)]
    store = ShardStore(path, [path], BlockTable.of(infos), provenance.compression, key=key)
    return store, prefix, provenance, kv
