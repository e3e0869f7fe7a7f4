"""What lets a bank prove it is read as written: a digest per stored field of every block, and a seal over
the index, and a digest over every gate index kept with the bank.

A block's digest (CRC-32) covers each stored tensor's dtype, shape and bytes, so a flipped bit, a header
that says float where ints were written, or another bank's shard in its place is caught when the block
is read. The seal is a hash of the index (how the bank was built, its shards with their sizes) together
with the block table, the digests and the prefix, so an edited `bank.json` (layers reordered, blocks
cut) or table is caught when the bank is opened. A gate index built later (by a question, in any process)
cannot join the seal, so it carries its own digest, which names the bank's seal: an index that was edited,
damaged or copied from another bank is never used.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable
from typing import Any

import torch

FIELDS = ("token_ids", "keys", "values", "positions")
QUANTIZED_PARTS = ("", ".scales", ".zeros")  # a quantized field is stored as its codes plus scales and zeros


def tensor_digest(tensors: Iterable[torch.Tensor]) -> int:
    """A nonzero CRC-32 of the tensors' dtypes, shapes and bytes, in order: what zip and PNG check their data
    with, fast enough (GiB/s, hardware-assisted) to check every block read."""
    crc = 0
    for tensor in tensors:
        tensor = tensor.detach().contiguous().cpu()
        crc = zlib.crc32(f"{tensor.dtype}{tuple(tensor.shape)};".encode(), crc)
        crc = zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy().data, crc)
    return crc or 1


def field_digests(stored: dict[str, torch.Tensor], names: dict[str, str]) -> list[int]:
    """Per field of one block (`FIELDS` order; `names[field]` is its stored name), the digest of what is stored
    for it, or 0 where the block has no such field."""
    digests = []
    for field in FIELDS:
        parts = [stored[names[field] + part] for part in QUANTIZED_PARTS if names[field] + part in stored]
        digests.append(tensor_digest(parts) if parts else 0)
    return digests


def seal(index: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """The hash of an index and of the tensors it vouches for (table, digests, prefix); not of its own `seal`,
    nor of the gate indexes kept with the bank (`derived`: caches, checked on their own)."""
    unsealed = {k: v for k, v in index.items() if k not in ("seal", "derived")}
    hashed = hashlib.sha256(json.dumps(unsealed, sort_keys=True).encode())
    for name in sorted(tensors):
        hashed.update(f"{name}:{tensor_digest([tensors[name]])};".encode())
    return hashed.hexdigest()


def derived_digest(bank_seal: str, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> str:
    """The hash of gate index `name` kept with the bank sealed `bank_seal`: its metadata and every tensor."""
    described = {"bank": bank_seal, "name": name, "metadata": metadata}
    hashed = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for key in sorted(tensors):
        hashed.update(f"{key}:{tensor_digest([tensors[key]])};".encode())
    return hashed.hexdigest()
