"""Training (docs/training.md): compressor pre-training, end-to-end GRPO, and the gate head as a classifier."""

from .gate import GateMetrics, GateTrainingReport, evaluate_scores, fit_head, train_gate, train_head
from .gate_examples import GateExample, cached_examples, collect_examples
from .grpo import (
    GRPOConfig,
    GRPOExample,
    GRPOTrainer,
    RewardFunction,
    examples_from_cases,
    examples_from_jsonl,
    train_grpo,
    with_reasoner_adapter,
)
from .pretrain import PretrainConfig, start_or_resume

__all__ = [
    "GRPOConfig",
    "GRPOExample",
    "GRPOTrainer",
    "GateExample",
    "GateMetrics",
    "GateTrainingReport",
    "PretrainConfig",
    "RewardFunction",
    "cached_examples",
    "collect_examples",
    "evaluate_scores",
    "examples_from_cases",
    "examples_from_jsonl",
    "fit_head",
    "start_or_resume",
    "train_gate",
    "train_grpo",
    "train_head",
    "with_reasoner_adapter",
]
