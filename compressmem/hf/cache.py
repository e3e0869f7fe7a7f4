"""Caches for training forward passes that may be recomputed (activation checkpointing).

transformers' `DynamicCache` grows on every `update`, so a layer recomputed in the backward pass
would see its own keys twice. These caches answer `update` without growing: `PrefixCache` holds a
fixed KV prefix (a memory block) that every pass reads the same way, and `RecordingCache` keeps
the latest keys and values each layer computed (a block being made), overwriting them on a rerun.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer


def cached_kv(cache: Cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values `cache` holds for layer `layer`, each `[batch, kv_heads, tokens, head_dim]`."""
    found = cache.layers[layer]
    if not isinstance(found, CacheLayerMixin) or found.keys is None or found.values is None:
        raise ValueError(
            f"Layer {layer} of the model kept no attention keys and values in its cache: compressmem stores the "
            "KV of attention layers only, so pick layers that are attention layers."
        )
    return found.keys, found.values


class _PrefixLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None or self.values is None:
            raise RuntimeError("A prefix cache layer lost its prefix: something outside compressmem reset it.")
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class PrefixCache(Cache):
    """A read-only KV prefix: each layer attends to `prefix + new` and keeps nothing of `new`."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__(layers=[_PrefixLayer(keys, values) for keys, values in layers])


class _RecordingLayer(DynamicLayer):
    recorded: tuple[torch.Tensor, torch.Tensor]  # set by each update

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.recorded = (key_states, value_states)
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0


class RecordingCache(Cache):
    """An empty cache that remembers the keys and values each layer computed in the last pass."""

    def __init__(self, num_layers: int) -> None:
        super().__init__(layers=[_RecordingLayer() for _ in range(num_layers)])

    def recorded(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values layer `layer` computed in the last pass."""
        found = self.layers[layer]
        if not isinstance(found, _RecordingLayer):
            raise TypeError(f"Layer {layer} of a RecordingCache was replaced by a {type(found).__name__}.")
        return found.recorded
