"""Undo rotary position embeddings, so that the gate compares queries and keys by content alone.

Post-RoPE dot products fall off with distance, which makes a question placed after a chunk favour
the chunk's last tokens. Rotating every query and key back to position 0 removes that bias. Models
that mix attention kinds rotate each kind its own way (Gemma-3: sliding layers with one base
frequency, full layers with another), so the rotation is looked up per layer.
"""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel


class Rotary:
    """A model's rotary embedding, able to rotate states of any of its layers back to position 0."""

    def __init__(self, module: torch.nn.Module, layer_types: list[str] | None) -> None:
        self.module = module
        typed = "layer_type" in inspect.signature(module.forward).parameters
        self.layer_types = layer_types if typed else None

    @classmethod
    def of(cls, model: PreTrainedModel) -> Rotary | None:
        """The model's shared rotary-embedding module (`rotary_emb`), or None for models without one."""
        for name, module in model.named_modules():
            if name.endswith("rotary_emb"):
                return cls(module, getattr(model.config.get_text_config(), "layer_types", None))
        return None

    def unrotate(self, states: torch.Tensor, positions: torch.Tensor, layer: int) -> torch.Tensor:
        """Rotate layer `layer`'s `states` `[..., n, d]` back from `positions` `[..., n]` to position 0 (float32)."""
        flat = positions.reshape(1, -1).to(states.device)
        kind = {} if self.layer_types is None else {"layer_type": self.layer_types[layer]}
        cos, sin = self.module(states.float(), flat, **kind)
        cos = cos.reshape(*positions.shape, -1).to(states.device)
        sin = sin.reshape(*positions.shape, -1).to(states.device)
        if cos.shape[-1] != states.shape[-1]:
            raise ValueError(f"rotary dimension {cos.shape[-1]} differs from head_dim {states.shape[-1]}.")
        states = states.float()
        half = states.shape[-1] // 2
        rotated_half = torch.cat([-states[..., half:], states[..., :half]], dim=-1)
        return states * cos - rotated_half * sin

    def unrotate_layers(
        self, states: torch.Tensor, positions: torch.Tensor, layers: tuple[int, ...], dim: int
    ) -> torch.Tensor:
        """`unrotate` for states holding `layers` along dimension `dim` (with `positions` laid out alike)."""
        return torch.stack(
            [self.unrotate(states.select(dim, i), positions.select(dim, i), layer) for i, layer in enumerate(layers)],
            dim=dim,
        )
