"""Gates decide which memory blocks the reasoner reads; each builds an index of a bank once (kept with the
bank), then scores every block against a gate prompt (question + notes) at each step."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..config import GateConfig
from ..kernels import gate_scores
from .attention import AttentionGate, GateIndex, default_gate_layers
from .head import GateHead, GateHeadError, HeadGate
from .lexical import LexicalGate, LexicalIndex

Gate = AttentionGate | LexicalGate | HeadGate


def build_gate(
    config: GateConfig | None, tokenizer: PreTrainedTokenizerBase, layers: tuple[int, ...], head: GateHead | None = None
) -> Gate | None:
    """The gate `config` names (None: no gate, every block is read), reading keys at `layers`."""
    if config is None:
        return None
    if config.kind == "head":
        if head is None:
            raise GateHeadError(
                "gate kind 'head' needs trained weights: load a checkpoint that has them with "
                "from_pretrained(base, checkpoint=CHECKPOINT), pass gate_head=, or train one with "
                "`compressmem train gate`."
            )
        return HeadGate(tokenizer, head)
    if config.kind == "attention":
        return AttentionGate(tokenizer, layers, config.sharpness)
    return LexicalGate(tokenizer)


__all__ = [
    "AttentionGate",
    "Gate",
    "GateHead",
    "GateHeadError",
    "GateIndex",
    "HeadGate",
    "LexicalGate",
    "LexicalIndex",
    "build_gate",
    "default_gate_layers",
    "gate_scores",
]
