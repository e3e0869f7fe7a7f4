"""Every use compressmem makes of another library's private names or undocumented behaviour, in one place.

transformers, bitsandbytes and accelerate offer no public switch for a few things compressmem needs: the
attention implementation a model runs, the per-layer state of activation checkpointing, the CPU weight
repacking of bitsandbytes' 4-bit layers, the execution device and offloaded weights of accelerate's hooks,
and ending a forward pass early from inside attention. Each is a small function here that says which
library version it was written against and what it relies on; `tests/test_compat.py` checks each of those
assumptions against the installed versions, so an upgrade that changes one fails there, by name, rather
than somewhere deep in compression or training. No other module of compressmem touches these names.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import torch
from transformers import PreTrainedModel

# --- transformers (written against 5.24) ---------------------------------------------------------------------


def attention_implementation(model: PreTrainedModel) -> str:
    """The attention implementation `model` runs now (`"sdpa"`, `"eager"`, a registered name, ...).

    transformers 5.24 keeps it in the private `config._attn_implementation` (set by `from_pretrained`,
    `from_config` and the public `set_attn_implementation`) and has no public getter.
    """
    return model.config._attn_implementation


def eager_attention(module: torch.nn.Module) -> Callable:
    """The eager attention function of the modelling file that defines the attention `module`.

    transformers 5.24 registers no `"eager"` entry in `ALL_ATTENTION_FUNCTIONS`: each modelling file
    (`modeling_llama.py`, ...) defines its own module-level `eager_attention_forward`, which its attention
    layers call when the implementation is `"eager"`. This looks that function up by the module's class.
    """
    return sys.modules[type(module).__module__].eager_attention_forward


CHECKPOINTING_ATTRIBUTES = ("gradient_checkpointing", "_gradient_checkpointing_func", "_can_checkpoint_with_cache")
"""What transformers' activation checkpointing sets on a layer (5.24: `_set_gradient_checkpointing` sets the
first two on every module that has `gradient_checkpointing`; `GradientCheckpointingLayer` reads the third)."""


def checkpointing_state(layer: torch.nn.Module) -> dict[str, Any]:
    """The values of `CHECKPOINTING_ATTRIBUTES` that `layer` holds itself (not from its class), to be put back
    with `restore_checkpointing_state`: transformers 5.24 has no way to switch checkpointing off that restores
    a layer exactly as it was (`activation_checkpointing_disable` sets a default function and the flag on every
    layer, whatever the user had set)."""
    own = vars(layer)
    return {name: own[name] for name in CHECKPOINTING_ATTRIBUTES if name in own}


def restore_checkpointing_state(layer: torch.nn.Module, state: dict[str, Any]) -> None:
    """Put `layer`'s checkpointing attributes back as `checkpointing_state` saw them: those it held are set
    again, the others removed, so the class defaults (5.24: `gradient_checkpointing = False`,
    `_can_checkpoint_with_cache = False`) show through again."""
    for name in CHECKPOINTING_ATTRIBUTES:
        if name in state:
            setattr(layer, name, state[name])
        else:
            vars(layer).pop(name, None)


def keep_cache_when_checkpointed(layer: torch.nn.Module) -> None:
    """Let a decoder layer keep the cache it is given while activation checkpointing recomputes it.

    transformers 5.24's `GradientCheckpointingLayer` drops a `cache` argument under checkpointing unless the
    layer's private `_can_checkpoint_with_cache` is true (meant for layers that only read the cache, as
    compressmem's training caches do: `hf.cache`). Other modules are left alone.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    if isinstance(layer, GradientCheckpointingLayer):
        layer._can_checkpoint_with_cache = True


def has_input_grads_hook(model: PreTrainedModel) -> bool:
    """Whether `model.enable_input_require_grads()` has hooked its input embeddings (and not been undone).

    transformers 5.24 records the hooks in the private `_require_grads_hooks` (a list) and, for older callers,
    the first in `_require_grads_hook`; `disable_input_require_grads` empties the one and deletes the other.
    """
    return bool(getattr(model, "_require_grads_hooks", None)) or hasattr(model, "_require_grads_hook")


# --- ending a forward pass early (transformers 5.24) -------------------------------------------------------


class ForwardStopped(Exception):
    """Raised by `stop_forward` to end a forward pass once its last needed layer has been seen."""


def stop_forward() -> NoReturn:
    """End the forward pass that is running now, from inside a layer's attention (a `hf.probe` function).

    Relies on transformers 5.24's decoder layers writing their keys and values to the cache (`cache.update`)
    before calling the attention function, and on nothing between the attention function and the caller
    catching exceptions: the layers up to and including the current one have filled the cache, later
    layers never run. The pass must run inside `stoppable_forward`.
    """
    raise ForwardStopped


@contextlib.contextmanager
def stoppable_forward() -> Iterator[None]:
    """Run the body (a forward pass) so that `stop_forward` ends it quietly; the cache keeps what was written."""
    with contextlib.suppress(ForwardStopped):
        yield


# --- bitsandbytes (written against 0.50) -------------------------------------------------------------------


def turn_off_cpu_repacking(module: torch.nn.Module) -> bool:
    """Stop a bitsandbytes 4-bit layer from repacking its weight for the CPU; returns whether `module` is one.

    bitsandbytes 0.50's `Linear4bit` sets `support_avx512bf16_for_cpu` on each instance (PEFT's wrappers do
    not) and, while it is true, repacks its weight in place into a CPU layout whose matmul has no backward the
    first time it runs in eval mode on an input without gradient.
    """
    if "support_avx512bf16_for_cpu" not in vars(module):
        return False
    vars(module)["support_avx512bf16_for_cpu"] = False  # a plain instance attribute, set as Module.__setattr__ would
    return True


def undo_cpu_repacking(module: torch.nn.Module) -> None:
    """Put a bitsandbytes 4-bit layer's weight back in its ordinary layout if it was repacked for the CPU.

    bitsandbytes 0.50 marks a repacked weight with `quant_state.packing_format_for_cpu` and undoes it with its
    private `bitsandbytes.functional._convert_weight_packed_for_cpu_inverse(weight, quant_state)`, which returns
    the weight and quant state as they were before (the same function its own `state_dict` saving uses).
    """
    weight = module.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is None or not getattr(quant_state, "packing_format_for_cpu", False):
        return
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    from bitsandbytes.nn import Params4bit

    if not isinstance(weight, Params4bit):
        raise TypeError(
            f"{type(module).__name__}'s weight is marked as repacked for the CPU by bitsandbytes but is a "
            f"{type(weight).__name__}, not a bitsandbytes Params4bit: this bitsandbytes version is not supported."
        )
    weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, quant_state)


# --- accelerate (written against 1.16) ---------------------------------------------------------------------


def hook_execution_device(module: torch.nn.Module) -> torch.device | None:
    """The device accelerate's hook on `module` runs it on (`device_map` dispatch, offloading), or None.

    accelerate 1.16 keeps a module's hook in the private attribute `_hf_hook`; an `AlignDevicesHook` moves the
    inputs and (offloaded) weights to its `execution_device` before each forward.
    """
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    return None if device is None else torch.device(device)


def offloaded_weight(module: torch.nn.Module, name: str) -> torch.Tensor:
    """The weight `name` of a `module` whose parameters accelerate offloaded (they read as `meta` meanwhile).

    accelerate 1.16's `AlignDevicesHook` (in the private `_hf_hook`) holds the real weights in `weights_map`,
    keyed by the parameter's name within the module, and loads them only for the duration of a forward.
    """
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        raise ValueError(
            f"{type(module).__name__} has no accelerate hook, so none of its weights were offloaded: read "
            f"its {name!r} parameter directly."
        )
    return hook.weights_map[name]
