"""Gates decide which memory blocks the reasoner reads; each builds an index of a bank once, then
scores every block against a gate prompt (question + working memory) at each step."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..config import MemoryConfig
from ..kernels import gate_scores
from .attention import AttentionGate, GateIndex, default_gate_layers
from .head import GateHead, GateHeadError, HeadGate
from .lexical import LexicalGate, LexicalIndex

Gate = AttentionGate | LexicalGate | HeadGate


def build_gate(config: MemoryConfig, tokenizer: PreTrainedTokenizerBase, layers: tuple[int, ...],
               head: GateHead | None = None) -> Gate | None:
    if config.gate == "head":
        if head is None:
            raise GateHeadError("gate='head' needs trained weights: load a checkpoint that has them with "
                                "from_pretrained(base, memory=CHECKPOINT), pass gate_head=, or train one with "
                                "`compressmem train gate`.")
        return HeadGate(tokenizer, head)
    if config.gate == "attention":
        return AttentionGate(tokenizer, layers, config.gate_sharpness)
    if config.gate == "lexical":
        return LexicalGate(tokenizer)
    return None


__all__ = ["AttentionGate", "Gate", "GateHead", "GateHeadError", "GateIndex", "HeadGate", "LexicalGate", "LexicalIndex",
           "build_gate", "default_gate_layers", "gate_scores"]
