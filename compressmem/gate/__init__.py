"""Gates decide which memory blocks the reasoner reads; each builds an index of a bank once (kept with the
bank), then scores every block against a gate prompt (question + notes) at each step.

Every gate follows the `Gate` protocol and registers its kind with `@register`, one file per gate:
`lexical` (BM25 over the blocks' text), `semantic` (BM25 fused with sentence-embedding similarity, for
questions worded unlike the text; needs the `semantic` extra), `attention` (training-free, over compressed keys)
and `head` (a trained `GateHead` over compressed keys and, optionally, BM25).
"""

from __future__ import annotations

from ..kernels import gate_scores
from .attention import AttentionGate, GateIndex, default_gate_layers
from .base import GATES, Gate, build_gate, finite_scores, register
from .head import GateHead, GateHeadError, HeadGate
from .lexical import LexicalGate, LexicalIndex
from .semantic import SemanticGate, SemanticIndex

__all__ = [
    "GATES",
    "AttentionGate",
    "Gate",
    "GateHead",
    "GateHeadError",
    "GateIndex",
    "HeadGate",
    "LexicalGate",
    "LexicalIndex",
    "SemanticGate",
    "SemanticIndex",
    "build_gate",
    "default_gate_layers",
    "finite_scores",
    "gate_scores",
    "register",
]
