"""The bank builder: chunks -> blocks, in batches, once per document.

`BankBuilder` is the one place where chunks are compressed. `CompressedMemoryModel.compress` and
`compress_stream`, distributed compression and the trainers all go through it, so a bank records
how it was built (`Provenance`) the same way whichever path made it, and a reader can state what it
needs of a bank (`BankNeeds`) in the same terms.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .bank import BankNeeds, MemoryBank, MemoryBlock, Prefix, Provenance
from .chunking import Chunk
from .compressors import CompressedChunks, Compressor
from .config import CompressionConfig
from .hf.fingerprint import BaseFingerprint
from .quantize import CHANNELS, TOKENS, Quantized, quantize, stored_quantization


@dataclass
class BankBuilder:
    """Compresses chunks that follow `prefix_ids` into blocks holding keys at `layers` (and values when
    `values`); without a `compressor` (nothing reads KV) a block is its chunk's token ids alone."""

    model: PreTrainedModel
    prefix_ids: torch.Tensor
    chunk_size: int
    fingerprint: BaseFingerprint
    compression: CompressionConfig | None = None
    compressor: Compressor | None = None
    layers: tuple[int, ...] = ()
    values: bool = False

    def __post_init__(self) -> None:
        if (self.compression is None) != (self.compressor is None):
            raise ValueError("A bank builder needs both the compression settings and their compressor, or neither.")

    def provenance(self) -> Provenance:
        """How the banks this builder makes are built."""
        digest = None if self.compressor is None else self.compressor.digest(self.model)
        layers = self.layers if self.compressor is not None else ()
        return Provenance(
            self.fingerprint,
            self.chunk_size,
            self.compression,
            digest,
            layers,
            self.values and self.compressor is not None,
        )

    def needs(self, layers: tuple[int, ...], values: bool, users: tuple[str, ...]) -> BankNeeds:
        """What a reader of this configuration needs of a bank: this builder's settings, keys at `layers`,
        values when `values`; no KV at all when this builder keeps none."""
        made = self.provenance()
        return BankNeeds(
            made.fingerprint,
            made.chunk_size,
            made.compression,
            made.compressor_digest,
            layers if made.compression is not None else (),
            values,
            users,
        )

    def empty_prefix(self) -> Prefix:
        """The prefix of a bank that keeps no KV."""
        return Prefix(self.prefix_ids)

    @torch.no_grad()
    def prefix(self, device: torch.device | str = "cpu") -> Prefix:
        """The shared prefix and, when blocks hold KV, its KV: the same for every chunk (attention is causal),
        so it is taken from compressing a one-token chunk."""
        if self.compressor is None:
            return self.empty_prefix()
        out = self.forward(self.prefix_ids[-1:].view(1, 1))
        return Prefix(
            self.prefix_ids,
            out.prefix_keys.to(device),
            None if out.prefix_values is None else out.prefix_values.to(device),
        )

    @torch.no_grad()
    def blocks(
        self, chunks: list[Chunk], device: torch.device, batch_size: int = 4, bar: tqdm | None = None
    ) -> tuple[list[MemoryBlock], Prefix]:
        """The chunks' blocks on `device`, compressing chunks of equal length `batch_size` at a time, and the
        shared prefix (with its KV when blocks hold KV)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive number of chunks, got {batch_size!r}.")
        if self.compressor is None:
            if bar is not None:
                bar.update(len(chunks))
            return [_block(chunk) for chunk in chunks], self.empty_prefix()
        made: list[MemoryBlock | None] = [None] * len(chunks)
        by_length = defaultdict(list)
        for i, chunk in enumerate(chunks):
            by_length[chunk.token_ids.numel()].append(i)
        prefix = self.empty_prefix()
        for members in by_length.values():
            for start in range(0, len(members), batch_size):
                batch = members[start : start + batch_size]
                out = self.forward(torch.stack([chunks[i].token_ids for i in batch]))
                for row, i in enumerate(batch):
                    made[i] = _block(chunks[i], out, row, device, self.compression)
                prefix = Prefix(
                    self.prefix_ids,
                    out.prefix_keys.to(device),
                    None if out.prefix_values is None else out.prefix_values.to(device),
                )
                if bar is not None:
                    bar.update(len(batch))
        return made, prefix  # type: ignore[return-value]

    def forward(self, chunk_ids: torch.Tensor) -> CompressedChunks:
        """Compress a `[batch, n]` tensor of equal-length chunks; autograd is the caller's (trainers
        recompute blocks with gradients through a learned compressor's `forward_blocks`)."""
        if self.compressor is None:
            raise ValueError("This configuration keeps no KV, so there is nothing to compress.")
        return self.compressor.forward_blocks(self.model, self.prefix_ids, chunk_ids, self.layers, self.values)

    def bank(
        self, chunks: list[Chunk], device: torch.device, batch_size: int = 4, show_progress: bool = True
    ) -> MemoryBank:
        """An in-memory bank of `chunks`, its blocks on `device`."""
        with tqdm(total=len(chunks), desc="Compressing", unit="chunk", disable=not show_progress) as bar:
            blocks, prefix = self.blocks(chunks, device, batch_size, bar)
        return MemoryBank.from_blocks(blocks, prefix, self.provenance())


def _block(
    chunk: Chunk,
    out: CompressedChunks | None = None,
    row: int = 0,
    device: torch.device | None = None,
    compression: CompressionConfig | None = None,
) -> MemoryBlock:
    """Chunk `chunk`'s block: row `row` of a compressed batch (quantized as `compression` says, where it was
    computed, then moved to `device`), or its token ids alone."""
    if out is None:
        return MemoryBlock(chunk.token_ids, None, None, None, chunk.document, chunk.token_start, chunk.char_span)
    keys: torch.Tensor | Quantized = out.keys[row]
    values: torch.Tensor | Quantized | None = None if out.values is None else out.values[row]
    quantization = stored_quantization(compression)
    if quantization is not None:
        bits, group = quantization
        keys = quantize(out.keys[row], bits, group, TOKENS)
        values = None if out.values is None else quantize(out.values[row], bits, group, CHANNELS)
    return MemoryBlock(
        chunk.token_ids,
        keys.to(device),
        None if values is None else values.to(device),
        out.positions[row].to(device),
        chunk.document,
        chunk.token_start,
        chunk.char_span,
    )
