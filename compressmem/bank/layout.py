"""The bank format's names and shapes, shared by its writer and its readers (format 4).

A bank folder holds `bank.json` (the index: how the bank was built, the KV's dtype and shape, every
shard with its size, and a seal), `table.safetensors` (per block its source span, its size, its shard
and the digests of its fields, as two tensors: a bank of millions of tokens opens in milliseconds),
`prefix.safetensors` (the section prefix every chunk was compressed after, and its KV),
`blocks-NNNNN.safetensors` shards (each records which blocks it holds, with their digests) and the gate
indexes built for the bank, `derived-NAME.safetensors`, each carrying a digest bound to the bank's seal.

A single `.safetensors` file is the same bank packed: the folder's tensors under the same names (every
shard's blocks, the table, the prefix, and each gate index's tensors as `derived.NAME.*`), `bank.json`
as the `index` entry of its metadata and the gate indexes' metadata and digests as its `derived` entry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..quantize import Quantized
from .block import BlockInfo, MemoryBlock
from .integrity import FIELDS
from .provenance import BankMismatchError

FORMAT = "compressmem.MemoryBank"
FORMAT_VERSION = 4  # 4: gate indexes sealed by digests, a file is a packed folder; 3: sealed; 2: unsealed
INDEX = "bank.json"
PREFIX_FILE = "prefix.safetensors"
TABLE_FILE = "table.safetensors"
TABLE_TENSOR = "block_table"
DIGESTS_TENSOR = "block_digests"
PREFIX_TENSORS = ("prefix_ids", "prefix_keys", "prefix_values")
KEY = "{index}.{field}"
SHARD_GLOB = "blocks-*.safetensors"
SIGNATURE_FILE = "signature.json"  # a signed folder's signature (`signing.py`)
SIGNATURE_METADATA = "signature"  # a signed file's signature, in its metadata
STREAM_STATE = "stream.json"  # an unfinished stream's settings, checked by a resume; removed once the index is written


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


def shard_name(number: int) -> str:
    """The file name of shard `number`."""
    return f"blocks-{number:05d}.safetensors"


def shard_number(path: Path) -> int:
    """The number in a shard's name (`blocks-00012.safetensors` is 12), or -1 for another file."""
    number = path.name.removeprefix("blocks-").split(".")[0]
    return int(number) if number.isdigit() else -1


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


def kv_layout(block: MemoryBlock) -> dict[str, Any] | None:
    """The dtype (or bits) and per-entry shape of a block's KV, as the index records them (None without KV)."""
    if block.keys is None:
        return None
    keys = block.keys
    dtype = f"int{keys.bits}" if isinstance(keys, Quantized) else str(keys.dtype).removeprefix("torch.")
    return {"dtype": dtype, "kv_heads": int(keys.shape[1]), "head_dim": int(keys.shape[-1])}


def info_row(info: BlockInfo) -> list[int]:
    """A block's info as a shard records it: document, token start, character span (-1, -1 without one), tokens,
    entries, bytes."""
    return [
        info.document,
        info.token_start,
        *(info.char_span or (-1, -1)),
        info.num_tokens,
        info.num_entries,
        info.num_bytes,
    ]


def row_info(row: Sequence[int]) -> BlockInfo:
    """The `BlockInfo` of an `info_row`."""
    document, start, char_start, char_end, tokens, entries, size = row
    return BlockInfo(document, start, None if char_start < 0 else (char_start, char_end), tokens, entries, size)


def row_digests(row: list) -> list[int]:
    """The digests a shard records for a block (after its index and its `info_row`), as ints."""
    return [int(digest, 16) for digest in row[8:]]


def open_safetensors(path: Path, device: str = "cpu") -> safe_open:
    """`safe_open` of a bank's file, refusing one that is missing, truncated or not safetensors with a
    `BankMismatchError` that names it."""
    try:
        return safe_open(str(path), framework="pt", device=device)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise BankMismatchError(
            f"{path} is not a readable safetensors file ({error}); the bank is damaged or incomplete: rebuild it."
        ) from None


def file_metadata(path: Path) -> dict[str, str]:
    """The metadata of a bank's safetensors file (empty when it has none)."""
    with open_safetensors(path) as handle:
        return handle.metadata() or {}


def parse_signature(text: str | None, where: Path) -> dict[str, Any] | None:
    """The signature record kept with a bank (`SIGNATURE_FILE` or `SIGNATURE_METADATA`), None when it has none."""
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        raise BankMismatchError(f"The signature of {where} is not valid JSON: it was damaged or edited.") from None
    return record if isinstance(record, dict) else {}


def read_tensors(path: Path, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Those of `names` that the safetensors file at `path` holds."""
    with open_safetensors(path) as handle:
        present = set(handle.keys())
        return {name: handle.get_tensor(name) for name in names if name in present}
