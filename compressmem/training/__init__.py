"""Training (DESIGN §3.6): the gate head as a classifier of evidence blocks."""

from .gate import GateMetrics, GateTrainingReport, evaluate_scores, fit_head, train_gate, train_head
from .gate_examples import GateExample, cached_examples, collect_examples

__all__ = ["GateExample", "GateMetrics", "GateTrainingReport", "cached_examples", "collect_examples",
           "evaluate_scores", "fit_head", "train_gate", "train_head"]
