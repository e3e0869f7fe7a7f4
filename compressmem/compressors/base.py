"""The compressor protocol: one forward pass over a batch of chunks, then keep what `score()` ranks highest."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from ..hf.adapters import adapter_active
from ..hf.cache import cached_kv
from ..hf.compat import stop_forward, stoppable_forward
from ..hf.placement import to_one_device
from ..hf.probe import probe


@dataclass
class CompressedChunks:
    """KV of a batch of equal-length chunks after compression.

    `keys`/`values`: `[batch, layers, kv_heads, m, head_dim]`; `positions`: `[batch, layers, kv_heads, m]`
    the RoPE position of every kept entry; `prefix_keys`/`prefix_values`: the shared
    prefix, `[layers, kv_heads, p, head_dim]`. `values` are None when only keys were asked for.
    """

    keys: torch.Tensor
    values: torch.Tensor | None
    positions: torch.Tensor
    prefix_keys: torch.Tensor
    prefix_values: torch.Tensor | None


class Compressor:
    """Runs `[prefix + chunk]` through the model once and keeps `ceil(n / ratio)` KV entries per head.

    Subclasses define `score()`: an importance for every chunk KV entry, computed from the post-RoPE
    queries and keys of one layer. Entries keep their original positions, so whatever reads a block
    places its own tokens after position `p + n`.
    """

    name = "none"

    def __init__(self, ratio: float = 1.0) -> None:
        self.ratio = ratio

    def score(self, query: torch.Tensor, key: torch.Tensor, prefix_len: int) -> torch.Tensor | None:
        """Importance of each chunk entry, `[batch, kv_heads, n]`; None keeps every entry."""
        return None

    def _ranked(self, importance: torch.Tensor | None) -> torch.Tensor:
        """`score()`'s importance where entries are to be ranked (a ratio above 1), refused when it gives none."""
        if importance is None:
            raise ValueError(
                f"{type(self).__name__} keeps 1/{self.ratio:g} of the KV entries but its score() ranks none: "
                "return an importance for every entry, or use a ratio of 1."
            )
        return importance

    def kept_entries(self, num_tokens: int) -> int:
        return max(1, math.ceil(num_tokens / self.ratio))

    def digest(self, model: PreTrainedModel) -> str | None:
        """A digest of the compressor's trained weights (None for a training-free compressor), so a bank can
        record which compressor made it."""
        return None

    @torch.no_grad()
    def compress(
        self,
        model: PreTrainedModel,
        prefix_ids: torch.Tensor,
        chunk_ids: torch.Tensor,
        layers: tuple[int, ...],
        keep_values: bool,
    ) -> CompressedChunks:
        """Compress a `[batch, n]` tensor of chunks that all follow `prefix_ids`, keeping `layers` only."""
        return self.forward_blocks(model, prefix_ids, chunk_ids, layers, keep_values)

    def forward_blocks(
        self,
        model: PreTrainedModel,
        prefix_ids: torch.Tensor,
        chunk_ids: torch.Tensor,
        layers: tuple[int, ...],
        keep_values: bool,
    ) -> CompressedChunks:
        """`compress`, with autograd left to the caller."""
        batch, num_tokens = chunk_ids.shape
        prefix_len = prefix_ids.numel()
        ids = torch.cat([prefix_ids.expand(batch, -1), chunk_ids], dim=1).to(model.device)
        scores: dict[int, torch.Tensor] = {}
        wanted = set(layers)
        scoring = self.ratio > 1
        # A bank of keys at a few gate layers needs nothing from the layers after the last of them.
        stop_after = max(layers) if not keep_values else None

        def record(layer_idx: int, query: torch.Tensor, key: torch.Tensor) -> None:
            if scoring and layer_idx in wanted:
                scores[layer_idx] = self._ranked(self.score(query, key, prefix_len))
            if layer_idx == stop_after:
                stop_forward()

        cache = DynamicCache()
        with (
            adapter_active(model, None),
            stoppable_forward(),
            probe(model, record) if scoring or stop_after is not None else contextlib.nullcontext(),
        ):
            model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)

        kept = self.kept_entries(num_tokens)
        keys, values, positions = [], [], []
        for layer_idx in layers:
            layer_keys, layer_values = (kv[:, :, prefix_len:] for kv in cached_kv(cache, layer_idx))
            index = torch.arange(num_tokens, device=layer_keys.device).expand(*layer_keys.shape[:2], -1)
            if scoring:
                index = scores[layer_idx].topk(kept, dim=-1).indices.sort(dim=-1).values
                gather = index.unsqueeze(-1).expand(-1, -1, -1, layer_keys.shape[-1])
                layer_keys, layer_values = layer_keys.gather(2, gather), layer_values.gather(2, gather)
            keys.append(layer_keys)
            values.append(layer_values)
            positions.append((index + prefix_len).to(torch.int32))
        device = model.device  # layers split over devices (device_map) are gathered on the first
        prefix_keys = torch.stack(to_one_device([cached_kv(cache, i)[0][0, :, :prefix_len] for i in layers], device))
        prefix_values = torch.stack(to_one_device([cached_kv(cache, i)[1][0, :, :prefix_len] for i in layers], device))
        return CompressedChunks(
            keys=torch.stack(to_one_device(keys, device), dim=1),
            values=torch.stack(to_one_device(values, device), dim=1) if keep_values else None,
            positions=torch.stack(to_one_device(positions, device), dim=1),
            prefix_keys=prefix_keys,
            prefix_values=prefix_values if keep_values else None,
        )
