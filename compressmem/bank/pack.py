"""Saving a bank: as a folder, through `BankWriter`, or as one file that packs that folder.

A single-file bank is written as a folder first (the same writer, index and seal as `compress_stream`'s),
then packed: every tensor of the folder under the same name in one safetensors file, `bank.json` as its
`index` metadata, and the gate indexes kept in the folder as `derived.NAME.*` tensors with their
records (metadata, bank seal, digest) as its `derived` metadata. So the two forms hold the same bank
under the same seal, and one reader reads both.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .block import MemoryBlock
from .derived import PACKED_TENSORS, DerivedIndex, FolderIndexes, packed_records
from .layout import FORMAT, FORMAT_VERSION, INDEX, PREFIX_FILE, SIGNATURE_METADATA, TABLE_FILE, Prefix
from .provenance import Provenance
from .signing import signature_record
from .writer import BankWriter, write_index


def write_folder(
    directory: str | Path,
    blocks: Iterable[MemoryBlock],
    prefix: Prefix,
    provenance: Provenance,
    derived: dict[str, DerivedIndex],
    shard_blocks: int = 256,
) -> None:
    """Write `blocks` as a bank folder of shards of `shard_blocks` blocks, sealed, with the gate indexes `derived`
    kept beside them."""
    writer = BankWriter(directory, provenance, shard_blocks)
    for block in blocks:
        writer.add(block)
    index = write_index(directory, [writer.finish()], prefix, provenance)
    kept = FolderIndexes(Path(directory), index["seal"])
    for name, (tensors, metadata) in derived.items():
        kept.put(name, tensors, metadata)


def write_file(
    path: str | Path,
    blocks: Iterable[MemoryBlock],
    prefix: Prefix,
    provenance: Provenance,
    derived: dict[str, DerivedIndex],
    sign_key: Any = None,
) -> None:
    """Write `blocks` as a single-file bank: a bank folder (in a temporary folder beside `path`), packed, and signed
    with `sign_key` when one is given."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch:
        folder = Path(scratch) / "bank"
        write_folder(folder, blocks, prefix, provenance, derived)
        seal = json.loads((folder / INDEX).read_text(encoding="utf-8"))["seal"]
        pack(folder, path, None if sign_key is None else signature_record(seal, sign_key))


def pack(folder: Path, path: Path, signature: dict[str, str] | None = None) -> None:
    """Write the bank folder `folder` as the single file `path` (atomically: under a temporary name, then
    renamed), with its `signature` when given. The gate indexes that pass their check go with it."""
    index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    tensors: dict[str, torch.Tensor] = {**load_file(str(folder / PREFIX_FILE)), **load_file(str(folder / TABLE_FILE))}
    for shard in index["shards"]:
        tensors.update(load_file(str(folder / shard["file"])))
    indexes = FolderIndexes(folder, index["seal"]).items()
    for name, (named, _) in indexes.items():
        start = PACKED_TENSORS.format(name=name)
        tensors.update({start + key: value.detach().contiguous().cpu() for key, value in named.items()})
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "index": json.dumps(index),
        "derived": json.dumps(packed_records(index["seal"], indexes)),
    }
    if signature is not None:
        metadata[SIGNATURE_METADATA] = json.dumps(signature)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)
