"""Where each decoder layer runs, for bases split over devices (`device_map="auto"`).

A KV prefix handed to the model must sit, layer by layer, where that layer computes: transformers
concatenates each layer's cached keys with the new ones on the layer's device. Layers offloaded to
CPU or disk by accelerate compute on their hook's execution device, not where their weights rest.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from .compat import hook_execution_device


def layer_devices(model: PreTrainedModel) -> list[torch.device]:
    """The device each decoder layer computes on, in layer order."""
    return [_execution_device(layer) for layer in model.get_decoder().layers]


def check_placement(model: PreTrainedModel) -> None:
    """Refuse a base whose first weights were offloaded: inputs go to `model.device`, which is then `meta`."""
    if model.device.type == "meta":
        raise ValueError(
            "The base model's input embeddings were offloaded (device_map put them on 'cpu' or 'disk' for "
            "execution elsewhere), so it has no device to send inputs to. Keep them on a device: give that "
            "device more room with max_memory, or put 'model.embed_tokens' on it in the device_map."
        )


def input_embedding_weight(model: PreTrainedModel) -> torch.Tensor:
    """`model`'s input embedding matrix, as its parameter (on `meta` when accelerate offloaded it)."""
    embeddings = model.get_input_embeddings()
    weight = embeddings.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(
            f"{type(model).__name__}'s input embeddings ({type(embeddings).__name__}) have no weight matrix."
        )
    return weight


def to_one_device(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """`tensors` (e.g. one per layer, from layers on several devices) on one device, ready to stack."""
    return [tensor.to(device) for tensor in tensors]


def _execution_device(module: torch.nn.Module) -> torch.device:
    device = hook_execution_device(module)
    return device if device is not None else next(module.parameters()).device
