"""Readers of the banks release 0.1 wrote (format 1): a folder (`bank.json` listing shards and block spans) or a
single file (spans and settings in its metadata). Neither has a block table, digests or a seal: the blocks'
sizes are read from the shards' headers, and gate indexes are built in each process (nothing binds a kept
one to the bank)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..config import CompressionConfig
from ..hf.fingerprint import BaseFingerprint
from .block import BlockInfo, BlockTable
from .layout import PREFIX_TENSORS, Prefix, open_safetensors, read_tensors, stored_names
from .provenance import Provenance
from .store import ShardStore

LEGACY_FILE_KEY = "blocks.{index}.{field}"
LEGACY_FOLDER_KEY = "{index}.{field}"
_ITEMSIZES = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4}
_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}

LegacyBank = tuple[ShardStore, Prefix, Provenance, dict[str, Any] | None]


def read_legacy_folder(directory: Path, index: dict[str, Any], prefix: Prefix, files: list[Path]) -> LegacyBank:
    """A release-0.1 bank folder, whose `bank.json` is `index` and whose shards are `files`."""
    spans = index["blocks"]
    shard_of = [shard for _, _, _, shard in spans]
    provenance = legacy_provenance(index, prefix.values is not None)
    sizes, kv = _layout(files, LEGACY_FOLDER_KEY, shard_of)
    infos = [
        BlockInfo(document, start, tuple(span) if span else None, *size)
        for (document, start, span, _), size in zip(spans, sizes)
    ]
    return ShardStore(files, BlockTable.of(infos, shard_of), provenance.compression), prefix, provenance, kv


def read_legacy_file(path: Path, metadata: dict[str, str]) -> LegacyBank:
    """A release-0.1 single-file bank, whose safetensors metadata is `metadata`."""
    spans = json.loads(metadata["spans"])
    prefix = Prefix.from_tensors(read_tensors(path, PREFIX_TENSORS))
    index = {
        "settings": json.loads(metadata["settings"]),
        "layers": json.loads(metadata["layers"]),
        "fingerprint": json.loads(metadata["fingerprint"]),
    }
    provenance = legacy_provenance(index, prefix.values is not None)
    sizes, kv = _layout([path], LEGACY_FILE_KEY, [0] * len(spans))
    infos = [
        BlockInfo(document, start, tuple(span) if span else None, *size)
        for (document, start, span), size in zip(spans, sizes)
    ]
    store = ShardStore([path], BlockTable.of(infos), provenance.compression, key=LEGACY_FILE_KEY)
    return store, prefix, provenance, kv


def legacy_provenance(index: dict[str, Any], has_values: bool) -> Provenance:
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


def _layout(files: list[Path], key: str, shard_of: list[int]) -> tuple[list[tuple[int, int, int]], dict | None]:
    """Per block (tokens, entries, bytes as stored), read from the shards' headers, and the KV layout."""
    sizes: list[tuple[int, int, int]] = []
    kv = None
    handles = {}
    try:
        for index, shard in enumerate(shard_of):
            if shard not in handles:
                handles[shard] = open_safetensors(files[shard])
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
