"""Gate training: the `GateHead` as a binary classifier of evidence blocks.

The head is a logistic regression over a few hundred features, so it is fitted full-batch with
L-BFGS in seconds; collecting the examples (`gate_examples`: compressing banks, running rollouts)
is the cost. `train_gate` does both, reports held-out precision, recall and AUC against the
training-free attention and lexical gates, and writes a loadable compressmem checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import CompressionConfig, GateConfig, ReadingConfig
from ..eval.cases import EvalCase
from ..gate import GateHead
from ..model import CompressedMemoryModel
from .gate_examples import GateExample, cached_examples, gate_sharpness


@dataclass
class GateMetrics:
    """Held-out quality of a gate's block scores over the unread blocks of each decision."""

    auc: float  # mean over decisions with both classes of the ranking AUC
    top1_precision: float  # decisions whose best unread block is evidence, among those with unread evidence
    precision: float | None = None  # at the threshold, over all unread blocks of all decisions
    recall: float | None = None
    threshold: float | None = None
    decisions: int = 0
    extra: dict = field(default_factory=dict)


def fit_head(head: GateHead, examples: list[GateExample], l2: float = 1e-2, max_iter: int = 300) -> list[float]:
    """Fit the head's weights by L-BFGS on the cross-entropy of unread blocks plus an L2 penalty; returns
    the loss after each evaluation.

    Features are standardised for the fit, so the penalty weighs every feature alike whatever its
    units (BM25 against log-sum-exp), then the scaling is folded back into the weights and bias.
    Unweighted by class, so the probabilities stay calibrated for a threshold.
    """
    inputs = torch.cat([e.for_head(head)[e.unread] for e in examples]).float()
    targets = torch.cat([e.evidence[e.unread] for e in examples]).float()
    mean, std = inputs.mean(dim=0), inputs.std(dim=0).clamp(min=1e-6)
    standard = (inputs - mean) / std
    weight = torch.zeros(inputs.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")
    losses: list[float] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(standard @ weight + bias, targets)
        loss = loss + l2 * weight.square().sum()
        loss.backward()
        losses.append(loss.item())
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        head.weight.copy_(weight / std)
        head.bias.copy_(bias - (weight * mean / std).sum())
    return losses


@torch.no_grad()
def head_probabilities(head: GateHead, examples: list[GateExample]) -> list[torch.Tensor]:
    return [torch.sigmoid(head(e.for_head(head).float())) for e in examples]


def best_threshold(scores: list[torch.Tensor], examples: list[GateExample]) -> float:
    """The threshold with the best F1 over the unread blocks of `examples`."""
    flat = torch.cat([s[e.unread] for s, e in zip(scores, examples)])
    labels = torch.cat([e.evidence[e.unread] for e in examples])
    order = flat.argsort(descending=True)
    hits = labels[order].float().cumsum(0)
    precision = hits / torch.arange(1, len(order) + 1)
    recall = hits / labels.sum().clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-9)
    return float(flat[order][f1.argmax()])


def evaluate_scores(
    scores: list[torch.Tensor], examples: list[GateExample], threshold: float | None = None
) -> GateMetrics:
    """AUC, top-1 precision and (with a threshold) precision and recall of `scores` on `examples`."""
    aucs, top1 = [], []
    for s, e in zip(scores, examples):
        candidates, labels = s[e.unread], e.evidence[e.unread]
        if labels.any():
            top1.append(bool(labels[candidates.argmax()]))
            if not labels.all():
                aucs.append(ranking_auc(candidates, labels))
    metrics = GateMetrics(auc=_mean(aucs), top1_precision=_mean(top1), decisions=len(examples))
    if threshold is not None:
        chosen = torch.cat([s[e.unread] >= threshold for s, e in zip(scores, examples)])
        labels = torch.cat([e.evidence[e.unread] for e in examples])
        metrics.threshold = threshold
        metrics.precision = float((chosen & labels).sum() / chosen.sum().clamp(min=1))
        metrics.recall = float((chosen & labels).sum() / labels.sum().clamp(min=1))
        metrics.extra["blocks_passed_per_decision"] = float(chosen.sum()) / max(len(examples), 1)
    return metrics


def ranking_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(a random positive outscores a random negative), ties counting one half."""
    positive, negative = scores[labels], scores[~labels]
    wins = (positive[:, None] > negative[None, :]).float() + 0.5 * (positive[:, None] == negative[None, :]).float()
    return float(wins.mean())


def _mean(values: list) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


@dataclass
class GateTrainingReport:
    """What `train_gate` measured: held-out metrics per gate, the threshold chosen, the loss curve."""

    head: GateMetrics
    attention: GateMetrics
    lexical: GateMetrics
    per_task: dict[str, dict[str, GateMetrics]]
    train_decisions: int
    losses: list[float]

    def to_dict(self) -> dict:
        return {
            "head": dataclasses.asdict(self.head),
            "attention": dataclasses.asdict(self.attention),
            "lexical": dataclasses.asdict(self.lexical),
            "train_decisions": self.train_decisions,
            "per_task": {
                task: {name: dataclasses.asdict(m) for name, m in gates.items()}
                for task, gates in self.per_task.items()
            },
            "losses": self.losses,
        }

    def markdown(self) -> str:
        lines = [
            "| gate | tasks | AUC | top-1 precision | precision | recall | blocks passed per decision |",
            "|---|---|---|---|---|---|---|",
        ]
        rows = [("head", "all", self.head), ("attention", "all", self.attention), ("lexical", "all", self.lexical)]
        rows += [(name, task, m) for task, gates in self.per_task.items() for name, m in gates.items()]
        for name, task, m in rows:
            passed = m.extra.get("blocks_passed_per_decision")
            lines.append(
                f"| {name} | {task} | {m.auc:.3f} | {m.top1_precision:.3f} | {_fmt(m.precision)} | "
                f"{_fmt(m.recall)} | {_fmt(passed)} |"
            )
        return "\n".join(lines) + "\n"


def train_head(
    head: GateHead, train: list[GateExample], test: list[GateExample], l2: float = 1e-2
) -> GateTrainingReport:
    """Fit `head` on `train`, pick its threshold there, and compare it on `test` with the baselines."""
    losses = fit_head(head, train, l2=l2)
    threshold = best_threshold(head_probabilities(head, train), train)

    def compare(examples: list[GateExample]) -> dict[str, GateMetrics]:
        return {
            "head": evaluate_scores(head_probabilities(head, examples), examples, threshold),
            "attention": evaluate_scores([e.attention_scores for e in examples], examples),
            "lexical": evaluate_scores([e.lexical_scores for e in examples], examples),
        }

    overall = compare(test)
    tasks = sorted({e.task for e in test})
    per_task = {task: compare([e for e in test if e.task == task]) for task in tasks} if len(tasks) > 1 else {}
    return GateTrainingReport(overall["head"], overall["attention"], overall["lexical"], per_task, len(train), losses)


def train_gate(
    model: CompressedMemoryModel,
    train_cases: list[EvalCase],
    test_cases: list[EvalCase],
    out: Path,
    *,
    lexical: bool = True,
    max_steps: int | None = None,
    l2: float = 1e-2,
    show_progress: bool = True,
) -> tuple[CompressedMemoryModel, GateTrainingReport]:
    """Train a gate head for `model`'s base and write a checkpoint to `out` that reads with it.

    The checkpoint's configuration is `model`'s with the head as its gate, at the threshold of best
    training F1, and reading order "score" (re-score after every update, read the best unread block over
    the threshold), bounded by `max_steps`; the banks keep `model`'s compression, or `select` at ratio 4
    when it has none. Examples are cached in `out` and reused when unchanged.
    """
    config = model.memory_config
    compression = config.compression or CompressionConfig("select")
    sharpness = gate_sharpness(config)
    keys = GateConfig("attention", top_k=1, layers=model.gate_layers, sharpness=sharpness)
    keyed = model.with_config(
        config.replace(
            compression=compression,
            gate=keys,
            reading=dataclasses.replace(config.reading, order="document", recall=False),
        ),
        show_progress=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    train = cached_examples(keyed, train_cases, out / "examples-train.safetensors", show_progress)
    test = cached_examples(keyed, test_cases, out / "examples-test.safetensors", show_progress)
    heads = model.model.config.get_text_config().num_attention_heads
    head = GateHead(keyed.gate_layers, heads, sharpness, lexical=lexical)
    report = train_head(head, train, test, l2=l2)
    reading = config.replace(
        compression=compression,
        gate=GateConfig("head", top_k=None, threshold=report.head.threshold),
        reading=ReadingConfig(mode=config.reading.mode, order="score", max_steps=max_steps),
    )
    trained = type(model)(
        model.model,
        model.tokenizer,
        memory_config=reading,
        base_name=model.base_name,
        show_progress=model.show_progress,
        gate_head=head,
    )
    trained.save_pretrained(out)
    return trained, report


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
