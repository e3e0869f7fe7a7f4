"""Activation checkpointing for training passes that read a KV prefix under one of several adapters.

transformers' own checkpointing (`activation_checkpointing_enable`) is used, with two additions it
offers no switch for: each layer is recomputed under the adapter that was on when it first ran (the
compressor's or the reasoner's; passed to torch's checkpoint as its `context_fn`), and the layers keep
their cache (transformers drops it, because a growing cache would see its keys twice on the replay,
but the prefix caches of training never grow: `hf.cache.PrefixCache`, `RecordingCache`). Everything
changed on the user's model is put back on the way out: train or eval mode, checkpointing, the layers'
flags and the embedding hook transformers adds.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

from transformers import PreTrainedModel

from .adapters import active_adapter, adapter_active
from .compat import (
    checkpointing_state,
    has_input_grads_hook,
    keep_cache_when_checkpointed,
    restore_checkpointing_state,
)


@contextlib.contextmanager
def activation_checkpointing(model: PreTrainedModel, enabled: bool) -> Iterator[None]:
    """Train mode for the body, recomputing each decoder layer's activations in the backward pass when `enabled`."""
    was_training = model.training
    layers = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")] if enabled else []
    saved = [checkpointing_state(layer) for layer in layers]
    had_input_hook = has_input_grads_hook(model)
    if enabled:
        context = functools.partial(_recompute_under_current_adapter, model)
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False, "context_fn": context}
        )
        for layer in layers:
            keep_cache_when_checkpointed(layer)
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
        for layer, state in zip(layers, saved):
            restore_checkpointing_state(layer, state)
        if enabled and not had_input_hook and has_input_grads_hook(model):
            model.disable_input_require_grads()


def _recompute_under_current_adapter(model: PreTrainedModel) -> tuple[contextlib.AbstractContextManager, ...]:
    """torch's `context_fn`: run a layer as is, and recompute it under the adapter that is on now."""
    return contextlib.nullcontext(), adapter_active(model, active_adapter(model))
