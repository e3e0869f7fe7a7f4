"""Named LoRA adapters inside the base model: the compressor's and the reasoner's.

Both are injected with PEFT into the user's own model object and are off by default, so the
base model's `generate()` is untouched; each is switched on, through PEFT's public API, only around
the forward passes it belongs to (`adapter_active`). Saved in PEFT's layout (`adapter_config.json`,
`adapter_model.safetensors`), never with the base model's weights.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from ..errors import CheckpointMismatchError
from .compat import turn_off_cpu_repacking, undo_cpu_repacking

if TYPE_CHECKING:
    from peft import LoraConfig

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def default_lora_config(rank: int) -> LoraConfig:
    """The LoRA settings both adapters use: rank `rank` on the attention projections, alpha `2 * rank`."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LORA_TARGETS), lora_dropout=0.0)


def attach_adapter(model: PreTrainedModel, config: LoraConfig, name: str, seed: int | None = None) -> None:
    """Inject adapter `name` into `model`, switched off; `seed` fixes its random initialisation.

    PEFT's own injection, not transformers' adapter integration, so any transformers version that
    PEFT supports works. The base weights' trainability is left as the user had it.
    """
    from peft import inject_adapter_in_model

    if adapter_weights(model, name):
        raise ValueError(f"The model already holds an adapter named {name!r}; load a fresh base model.")
    trainable = {key: weight.requires_grad for key, weight in model.named_parameters()}
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # two adapters is the design
        if seed is not None:
            torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=name)
    _activate(model, None)
    for key, weight in model.named_parameters():
        weight.requires_grad_(trainable.get(key, False))  # new adapter weights start frozen; trainers thaw them


def keep_quantized_differentiable(model: PreTrainedModel) -> None:
    """Let gradients pass through a bitsandbytes 4-bit base's layers (QLoRA), however it ran before.

    On CPUs with AVX512-BF16, bitsandbytes (seen in 0.50) repacks a `Linear4bit` weight in place the
    first time the layer runs in eval mode on an input without gradient (any compression or
    generation) into a layout whose matmul has no backward: from then on gradients silently stop at
    that layer, so a compressor's memory embeddings, or any adapter below the top, learn nothing.
    Trainers call this first: it turns the repacking off in every 4-bit layer and undoes it where it
    happened. A no-op for other models.
    """
    for module in model.modules():
        if turn_off_cpu_repacking(module):  # bitsandbytes' own 4-bit layers, not PEFT's wrappers
            undo_cpu_repacking(module)


def adapter_weights(model: PreTrainedModel, name: str) -> dict[str, torch.nn.Parameter]:
    """Adapter `name`'s weights in `model`, by parameter name."""
    return {key: weight for key, weight in model.named_parameters() if f".{name}." in key}


@contextlib.contextmanager
def adapter_active(model: PreTrainedModel, name: str | None) -> Iterator[None]:
    """Run the body with adapter `name` on (or, for None, every adapter off), then restore what was on.

    Switched through PEFT's public API; the adapters' `requires_grad` is put back as it was, so a
    trainer's choice of what learns holds throughout. Which adapter runs is state of the whole model,
    so while one thread is inside this block another waits at its own (a model without adapters
    waits for nothing): concurrent callers never read with each other's adapter.
    """
    if not _tuner_layers(model):
        yield
        return
    with _lock_of(model):
        before = active_adapter(model)
        trainable = {
            adapter: any(w.requires_grad for w in adapter_weights(model, adapter).values())
            for adapter in _adapter_names(model)
        }
        _activate(model, name)
        try:
            yield
        finally:
            _activate(model, before)
            from peft.functional import set_requires_grad

            for adapter, flag in trainable.items():
                set_requires_grad(model, adapter, requires_grad=flag)


def active_adapter(model: PreTrainedModel) -> str | None:
    """The adapter now switched on in `model`, or None."""
    layers = _tuner_layers(model)
    if not layers or layers[0].disable_adapters:
        return None
    active = layers[0].active_adapters
    return active[0] if active else None


def save_adapter(
    model: PreTrainedModel,
    config: LoraConfig,
    name: str,
    directory: str | Path,
    extra: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write adapter `name` in PEFT's layout, plus `extra` tensors in the same safetensors file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    tensors = {key: weight.detach().contiguous().cpu() for key, weight in adapter_weights(model, name).items()}
    tensors.update({key: value.detach().contiguous().cpu() for key, value in (extra or {}).items()})
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata=metadata or {})


def load_adapter(
    model: PreTrainedModel, name: str, directory: str | Path, extra: tuple[str, ...] = ()
) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """Attach the adapter saved in `directory` as `name`; returns its `LoraConfig` and the `extra` tensors.

    Every saved tensor is checked against the adapter's place in `model` before any is copied: a file that lacks
    one, has one too many, or holds one of another shape (another rank, or saved from a base model with other
    layer sizes) raises `CheckpointMismatchError` naming the file, the tensor and both shapes, and leaves `model`
    without the adapter.
    """
    from peft import LoraConfig

    directory = Path(directory)
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no {WEIGHTS_FILE}; it is not a saved compressmem adapter.")
    try:
        tensors = load_file(str(path))
    except SafetensorError as error:
        raise CheckpointMismatchError(
            f"{path} is not a readable safetensors file ({error}); the adapter is damaged: save it again."
        ) from None
    absent = [key for key in extra if key not in tensors]
    if absent:
        raise CheckpointMismatchError(
            f"{path} lacks the tensor {absent[0]!r} the adapter needs; the adapter is "
            "damaged or incomplete: save it again."
        )
    extras = {key: tensors.pop(key) for key in extra}
    try:
        config = LoraConfig.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError) as error:  # missing, not JSON, not an object
        raise CheckpointMismatchError(
            f"{directory / CONFIG_FILE} is not a readable LoRA configuration ({error}); save the adapter again."
        ) from None
    if isinstance(config.r, bool) or not isinstance(config.r, int) or config.r < 1:
        raise CheckpointMismatchError(
            f"{directory / CONFIG_FILE}: the rank r must be a positive integer, got "
            f"{config.r!r}; save the adapter again."
        )
    attach_adapter(model, config, name)
    expected = adapter_weights(model, name)
    problem = _mismatch(expected, tensors, config.r)
    if problem:
        _detach(model, name)
        raise CheckpointMismatchError(f"The adapter in {path} does not fit this model: {problem}")
    with torch.no_grad():
        for key, weight in expected.items():
            weight.copy_(tensors[key])
    return config, extras


def _mismatch(expected: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor], rank: int) -> str | None:
    """What keeps the `saved` tensors from filling the adapter's `expected` weights, and what to do; or None."""
    missing = sorted(set(expected) - set(saved))
    unplaced = sorted(set(saved) - set(expected))
    if missing or unplaced:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} of the {len(expected)} tensors the model's adapter needs are missing from "
                f"the file (e.g. {missing[0]})"
            )
        if unplaced:
            parts.append(f"{len(unplaced)} tensors in the file have no place in the model (e.g. {unplaced[0]})")
        return (
            " and ".join(parts) + "; it was saved for a base model with other layers, or is incomplete: load it "
            "with the base model it was trained for."
        )
    wrong = [
        (key, tuple(saved[key].shape), tuple(weight.shape))
        for key, weight in sorted(expected.items())
        if tuple(saved[key].shape) != tuple(weight.shape)
    ]
    if not wrong:
        return None
    key, found, needed = wrong[0]
    more = f" (and {len(wrong) - 1} more tensors differ)" if len(wrong) > 1 else ""
    ranks = {
        int(tensor.shape[0]) for tensor_name, tensor in saved.items() if ".lora_A." in tensor_name and tensor.dim() == 2
    }
    if ranks and ranks != {rank}:
        advice = (
            f"the file's weights have rank {', '.join(map(str, sorted(ranks)))} but {CONFIG_FILE} says r={rank}: "
            "the two files do not belong together; save the adapter again."
        )
    else:
        advice = (
            "it was saved from a base model with other layer sizes: load it with the base model it was trained for."
        )
    return f"tensor {key} has shape {found} in the file, but the model needs {needed}{more}; {advice}"


def _detach(model: PreTrainedModel, name: str) -> None:
    """Take adapter `name` out of `model` again (a load that failed), through PEFT's own deletion."""
    from peft.tuners.tuners_utils import BaseTunerLayer, delete_adapter

    with _lock_of(model):
        delete_adapter(model, name, prefix="lora_", layer_cls=BaseTunerLayer)
        getattr(model, "peft_config", {}).pop(name, None)
        _activate(model, active_adapter(model))


def _activate(model: PreTrainedModel, name: str | None) -> None:
    """Switch adapter `name` on in every adapted layer (None: all off), through PEFT's public API."""
    layers = _tuner_layers(model)
    if name is None:
        for layer in layers:
            layer.enable_adapters(False)
        return
    from peft.functional import set_adapter

    set_adapter(model, name, inference_mode=True)
    for layer in layers:
        if layer.disable_adapters:
            layer.enable_adapters(True)


def _tuner_layers(model: PreTrainedModel) -> list:
    """The model's PEFT-adapted layers (none without PEFT imported: only PEFT injects them)."""
    if "peft" not in sys.modules:
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in model.modules() if isinstance(module, BaseTunerLayer)]


def _adapter_names(model: PreTrainedModel) -> set[str]:
    return {name for layer in _tuner_layers(model) for name in layer.lora_A}


_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def _lock_of(model: PreTrainedModel) -> threading.RLock:
    """The lock that serialises adapter switching on `model` (re-entrant: a switch may nest inside another)."""
    with _locks_guard:
        if model not in _locks:
            _locks[model] = threading.RLock()
        return _locks[model]


REASONER_ADAPTER = "compressmem_reasoner"


class ReasonerAdapter:
    """The reasoner's own LoRA adapter (optional): on while it reads blocks, writes its notes and answers;
    off for compression, the gate, and the base model's plain `generate()`."""

    name = REASONER_ADAPTER

    def __init__(self, config: LoraConfig) -> None:
        self.lora_config = config

    @classmethod
    def initialise(cls, model: PreTrainedModel, rank: int = 8, seed: int = 0) -> ReasonerAdapter:
        """A fresh adapter (LoRA B zero, so the reasoner starts as the base model) injected into `model`."""
        config = default_lora_config(rank)
        attach_adapter(model, config, REASONER_ADAPTER, seed=seed)
        return cls(config)

    @classmethod
    def load(cls, model: PreTrainedModel, directory: str | Path) -> ReasonerAdapter:
        config, _ = load_adapter(model, REASONER_ADAPTER, directory)
        return cls(config)

    def save(self, model: PreTrainedModel, directory: str | Path) -> None:
        save_adapter(model, self.lora_config, REASONER_ADAPTER, directory)

    def weights(self, model: PreTrainedModel) -> list[torch.nn.Parameter]:
        return list(adapter_weights(model, REASONER_ADAPTER).values())

    def active(self, model: PreTrainedModel) -> contextlib.AbstractContextManager:
        return adapter_active(model, REASONER_ADAPTER)
