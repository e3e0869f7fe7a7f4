"""Gates decide which memory blocks the reasoner reads; each builds an index of a bank once, then
scores every block against a gate prompt (question + working memory) at each step."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..config import MemoryConfig
from .attention import AttentionGate, GateIndex, default_gate_layers
from .lexical import LexicalGate, LexicalIndex
from .scoring import gate_scores

Gate = AttentionGate | LexicalGate


def build_gate(config: MemoryConfig, tokenizer: PreTrainedTokenizerBase, layers: tuple[int, ...]) -> Gate | None:
    if config.gate == "attention":
        return AttentionGate(tokenizer, layers, config.gate_sharpness)
    if config.gate == "lexical":
        return LexicalGate(tokenizer)
    return None


__all__ = ["AttentionGate", "Gate", "GateIndex", "LexicalGate", "LexicalIndex", "build_gate", "default_gate_layers",
           "gate_scores"]
