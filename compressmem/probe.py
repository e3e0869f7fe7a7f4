"""See the post-RoPE queries and keys of any transformers model without patching its modelling code.

transformers routes attention through a registry of attention functions chosen by
`config._attn_implementation`. We register one more, `compressmem_probe`: it computes attention
exactly as SDPA does and hands each layer's queries and keys to a callback. `probe(model, fn)`
switches a model to it for the duration of a `with` block, so the base model's own `generate()`
is never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PROBE_IMPLEMENTATION = "compressmem_probe"

ProbeFn = Callable[[int, torch.Tensor, torch.Tensor], None]
"""Called as fn(layer_idx, query [B, H, q, d], key [B, kv_heads, k, d]) once per attention layer."""

_active: list[ProbeFn] = []


def _probe_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    if _active:
        _active[-1](module.layer_idx, query, key)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(PROBE_IMPLEMENTATION, _probe_attention)
AttentionMaskInterface.register(PROBE_IMPLEMENTATION, sdpa_mask)


@contextlib.contextmanager
def probe(model: torch.nn.Module, fn: ProbeFn) -> Iterator[None]:
    """Run `model` inside the block with `fn` seeing every attention layer's queries and keys."""
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = PROBE_IMPLEMENTATION
    _active.append(fn)
    try:
        yield
    finally:
        _active.pop()
        config._attn_implementation = previous
