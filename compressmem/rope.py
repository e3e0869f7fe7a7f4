"""Undo rotary position embeddings, so that the gate compares queries and keys by content alone.

Post-RoPE dot products fall off with distance, which makes a question placed after a chunk favour
the chunk's last tokens. Rotating every query and key back to position 0 removes that bias.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


def find_rotary_embedding(model: PreTrainedModel) -> torch.nn.Module | None:
    """The model's shared rotary-embedding module (`rotary_emb`), or None for models without one."""
    for name, module in model.named_modules():
        if name.endswith("rotary_emb"):
            return module
    return None


def unrotate(states: torch.Tensor, positions: torch.Tensor, rotary: torch.nn.Module) -> torch.Tensor:
    """Rotate `states` `[..., n, d]` back from `positions` `[..., n]` (same leading shape) to position 0."""
    flat = positions.reshape(1, -1).to(states.device)
    cos, sin = rotary(states.float(), flat)
    cos = cos.reshape(*positions.shape, -1).to(states.device)
    sin = sin.reshape(*positions.shape, -1).to(states.device)
    if cos.shape[-1] != states.shape[-1]:
        raise ValueError(f"rotary dimension {cos.shape[-1]} differs from head_dim {states.shape[-1]}.")
    states = states.float()
    half = states.shape[-1] // 2
    rotated_half = torch.cat([-states[..., half:], states[..., :half]], dim=-1)
    return states * cos - rotated_half * sin
