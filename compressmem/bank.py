"""`MemoryBank`: a compressed document, computed once and reusable for any number of questions."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .fingerprint import BaseFingerprint

FORMAT_VERSION = 1


class BankMismatchError(ValueError):
    """The bank was built for another base model, or does not hold what the configuration needs."""


@dataclass(frozen=True)
class MemoryBlock:
    """One chunk of the context, compressed.

    `keys`/`values` are `[layers, kv_heads, m, head_dim]` for the layers in `MemoryBank.layers`, with
    RoPE applied at the entries' original positions (the bank's shared prefix at `0..p-1`, the chunk
    at `p..p+n-1`), which `positions` `[layers, kv_heads, m]` records entry by entry; `values` is None
    when the bank was built for gating only. `token_ids` are the
    chunk's raw tokens, so a block can always be expanded back to its text.
    """

    token_ids: torch.Tensor
    keys: torch.Tensor | None
    values: torch.Tensor | None
    positions: torch.Tensor | None
    document: int
    token_start: int
    char_span: tuple[int, int] | None

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def num_entries(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    def to(self, device: torch.device | str) -> "MemoryBlock":
        return replace(
            self,
            keys=None if self.keys is None else self.keys.to(device, non_blocking=True),
            values=None if self.values is None else self.values.to(device, non_blocking=True),
        )


@dataclass
class MemoryBank:
    """Compressed memory blocks of one context plus the base model they were built with.

    `prefix_ids` (the section header every chunk was compressed after) and its KV are shared by all
    blocks and stored once. Blocks stay where they were put (CPU by default) and the reasoner moves
    them to the model's device one at a time.
    """

    blocks: list[MemoryBlock]
    prefix_ids: torch.Tensor
    prefix_keys: torch.Tensor | None
    prefix_values: torch.Tensor | None
    layers: tuple[int, ...]
    fingerprint: BaseFingerprint
    settings: dict[str, Any]

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def num_tokens(self) -> int:
        """Tokens of the original context held by the bank."""
        return sum(block.num_tokens for block in self.blocks)

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor the bank holds, KV and token ids (as saved: ids at 4 bytes each)."""
        total = sum(_nbytes(t) for t in (self.prefix_keys, self.prefix_values)) + 4 * self.prefix_ids.numel()
        for block in self.blocks:
            total += _nbytes(block.keys) + _nbytes(block.values) + _nbytes(block.positions) + 4 * block.num_tokens
        return total

    @property
    def has_values(self) -> bool:
        return self.prefix_values is not None

    def check_compatible(self, fingerprint: BaseFingerprint) -> None:
        """Raise `BankMismatchError` naming both models if this bank was built for another base model."""
        if self.fingerprint.digest != fingerprint.digest:
            raise BankMismatchError(
                f"This memory bank was built with base model {self.fingerprint.describe()}, but it is being used "
                f"with {fingerprint.describe()}. Compressed KV only makes sense for the model that produced it: "
                "rebuild the bank with this model's compress()."
            )

    def subset(self, indices: list[int]) -> "MemoryBank":
        """A bank of only the blocks at `indices`, in that order (e.g. the evidence blocks of an oracle gate)."""
        if any(not 0 <= i < len(self.blocks) for i in indices):
            raise IndexError(f"block indices {indices} must lie in 0..{len(self.blocks) - 1}.")
        return replace(self, blocks=[self.blocks[i] for i in indices])

    def blocks_overlapping(self, spans: list[tuple[int, int]], document: int = 0) -> list[int]:
        """Indices of the blocks whose text overlaps any of the character `spans` of `document`."""
        return [i for i, block in enumerate(self.blocks)
                if block.document == document and block.char_span is not None
                and any(start < block.char_span[1] and block.char_span[0] < end for start, end in spans)]

    def to(self, device: torch.device | str) -> "MemoryBank":
        """Move every block to `device` (e.g. "cpu" to offload a bank built on a GPU)."""
        moved = [block.to(device) for block in self.blocks]
        return replace(
            self,
            blocks=moved,
            prefix_keys=None if self.prefix_keys is None else self.prefix_keys.to(device),
            prefix_values=None if self.prefix_values is None else self.prefix_values.to(device),
        )

    def save(self, path: str | Path) -> None:
        """Write the bank as one safetensors file (tensors plus JSON metadata; no pickle)."""
        tensors = {"prefix_ids": self.prefix_ids.to(torch.int32).contiguous()}
        if self.prefix_keys is not None:
            tensors["prefix_keys"] = self.prefix_keys.contiguous().cpu()
        if self.prefix_values is not None:
            tensors["prefix_values"] = self.prefix_values.contiguous().cpu()
        spans = []
        for i, block in enumerate(self.blocks):
            tensors[f"blocks.{i}.token_ids"] = block.token_ids.to(torch.int32).contiguous().cpu()
            if block.keys is not None:
                tensors[f"blocks.{i}.keys"] = block.keys.contiguous().cpu()
            if block.values is not None:
                tensors[f"blocks.{i}.values"] = block.values.contiguous().cpu()
            if block.positions is not None:
                tensors[f"blocks.{i}.positions"] = block.positions.contiguous().cpu()
            spans.append([block.document, block.token_start, list(block.char_span) if block.char_span else None])
        metadata = {
            "format": "compressmem.MemoryBank",
            "format_version": str(FORMAT_VERSION),
            "fingerprint": json.dumps(self.fingerprint.to_dict()),
            "layers": json.dumps(list(self.layers)),
            "settings": json.dumps(self.settings),
            "spans": json.dumps(spans),
        }
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "MemoryBank":
        """Read a bank written by `save`, or open a bank folder written by `compress_stream`.

        A file's tensors land on `device` (CPU unless told otherwise); a folder's blocks stay on disk
        and are read one at a time.
        """
        from safetensors import safe_open

        if Path(path).is_dir():
            from .storage import open_bank

            return open_bank(path)

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != "compressmem.MemoryBank":
            raise BankMismatchError(f"{path} is not a compressmem memory bank (no bank metadata in the file).")
        if int(metadata["format_version"]) > FORMAT_VERSION:
            raise BankMismatchError(
                f"{path} uses bank format {metadata['format_version']}; this compressmem reads up to "
                f"{FORMAT_VERSION}. Upgrade compressmem."
            )
        tensors = load_file(str(path), device=str(device))
        blocks = []
        for i, (document, token_start, span) in enumerate(json.loads(metadata["spans"])):
            blocks.append(MemoryBlock(
                token_ids=tensors[f"blocks.{i}.token_ids"].long(),
                keys=tensors.get(f"blocks.{i}.keys"),
                values=tensors.get(f"blocks.{i}.values"),
                positions=tensors.get(f"blocks.{i}.positions"),
                document=document,
                token_start=token_start,
                char_span=tuple(span) if span else None,
            ))
        return cls(
            blocks=blocks,
            prefix_ids=tensors["prefix_ids"].long(),
            prefix_keys=tensors.get("prefix_keys"),
            prefix_values=tensors.get("prefix_values"),
            layers=tuple(json.loads(metadata["layers"])),
            fingerprint=BaseFingerprint.from_dict(json.loads(metadata["fingerprint"])),
            settings=json.loads(metadata["settings"]),
        )


def _nbytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()
