"""`EvalCase`: one seeded evaluation question, with the evidence that answers it located in the context."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EvalCase:
    """A context, a question about it, the accepted answers, and where the answer's evidence lies.

    `evidence` holds character spans of `context` (needle sentences, assignment statements,
    supporting sentences): the gate's training labels and its recall metric are computed from them.
    """

    task: str
    case_id: str
    context: str
    question: str
    answers: tuple[str, ...]
    evidence: tuple[tuple[int, int], ...]
    length: int
    seed: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "case_id": self.case_id,
            "question": self.question,
            "answers": list(self.answers),
            "evidence": [list(span) for span in self.evidence],
            "length": self.length,
            "seed": self.seed,
            "metadata": self.metadata,
        }


def case_rng(task: str, length: int, seed: int, index: int) -> random.Random:
    """The random source of one case: the same (task, length, seed, index) always gives the same case."""
    return random.Random(f"compressmem:{task}:{length}:{seed}:{index}")
