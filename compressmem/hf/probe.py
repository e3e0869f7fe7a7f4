"""See the post-RoPE queries and keys of any transformers model without patching its modelling code.

transformers routes attention through a registry of attention functions chosen by the model's
attention implementation. For each implementation a model uses (`sdpa`, `eager`, flash, ...) we
register one more, `compressmem_probe:<implementation>`: it runs that very implementation, with the
same mask function, and first hands each layer's queries and keys to the probe of the calling thread.

`probe(model, fn)` switches the model to the probing implementation (through the public
`set_attn_implementation`) for the duration of a `with` block. It is safe for concurrent callers:
each thread sees only its own layers (the probe functions live in a thread-local stack), a pass of
another thread that runs meanwhile goes through the original implementation unchanged, and the
model gets its own implementation back when the last prober leaves.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .compat import attention_implementation, eager_attention

PROBE_PREFIX = "compressmem_probe:"

ProbeFn = Callable[[int, torch.Tensor, torch.Tensor], None]
"""Called as fn(layer_idx, query [B, H, q, d], key [B, kv_heads, k, d]) once per attention layer."""

_local = threading.local()
_lock = threading.Lock()
_probers: dict[int, tuple[int, str]] = {}  # id(model) -> (threads probing it, its own implementation)


def _stack() -> list[ProbeFn]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _original_attention(implementation: str, module: torch.nn.Module) -> Callable:
    """The attention function `implementation` names for `module` (its modelling file's own eager one)."""
    if implementation == "eager":
        return eager_attention(module)
    return ALL_ATTENTION_FUNCTIONS[implementation]


def _register(implementation: str) -> str:
    """Register the probing twin of `implementation` (once) and return its name."""
    name = PROBE_PREFIX + implementation
    if name in ALL_ATTENTION_FUNCTIONS:
        return name
    if implementation != "eager" and implementation not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError(
            f"compressmem cannot probe the attention implementation {implementation!r}; load the base "
            "model with attn_implementation='sdpa' or 'eager'."
        )

    def attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        stack = _stack()
        if stack:
            layer = module.layer_idx
            if not isinstance(layer, int):
                raise TypeError(
                    f"The attention module {type(module).__name__} has no integer layer_idx (got {layer!r}): "
                    "compressmem probes attention only in models whose attention layers know their index."
                )
            stack[-1](layer, query, key)
        return _original_attention(implementation, module)(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[implementation])
    return name


def _enter(model: PreTrainedModel) -> None:
    with _lock:
        count, own = _probers.get(id(model), (0, attention_implementation(model)))
        if count == 0:
            model.set_attn_implementation(_register(own))
        _probers[id(model)] = (count + 1, own)


def _leave(model: PreTrainedModel) -> None:
    with _lock:
        count, own = _probers[id(model)]
        if count == 1:
            del _probers[id(model)]
            model.set_attn_implementation(own)
        else:
            _probers[id(model)] = (count - 1, own)


@contextlib.contextmanager
def probe(model: PreTrainedModel, fn: ProbeFn) -> Iterator[None]:
    """Run `model` inside the block with `fn` seeing every attention layer's queries and keys of this thread."""
    _enter(model)
    _stack().append(fn)
    try:
        yield
    finally:
        _stack().pop()
        _leave(model)
