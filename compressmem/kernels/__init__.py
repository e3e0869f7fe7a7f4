"""The gate's scoring op, `compressmem::gate_scores`: a torch reference, a fused Triton kernel
(optional, `pip install compressmem[kernels]`) and the custom op that dispatches between them."""

from __future__ import annotations

from .op import gate_scores
from .reference import gate_scores_packed_reference, gate_scores_reference
from .triton_gate import gate_scores_triton, triton_available

__all__ = [
    "gate_scores",
    "gate_scores_packed_reference",
    "gate_scores_reference",
    "gate_scores_triton",
    "triton_available",
]
