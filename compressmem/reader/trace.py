"""What the reasoner did for one question: every read with its exact inputs and outputs, and the final notes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field


@dataclass
class ReadStep:
    """One read: the block read, the tokens read after it (`prompt_ids`: the update prompt, exactly as the
    model saw them), what the model wrote (text, token ids and, for rollouts, their log-probabilities), the
    notes that resulted, and the gate's scores when the block was chosen. `reused`: a raw read that read the
    KV an earlier raw read of the block computed (`ReadingConfig.keep_bits`) instead of its tokens."""

    block: int
    notes: str
    output: str
    prompt_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] | None = None
    gate_scores: list[float] | None = None
    recall: bool = False
    reused: bool = False

    @property
    def memory(self) -> str:
        """Deprecated: the notes after this read (`notes`)."""
        warnings.warn("ReadStep.memory is deprecated; use ReadStep.notes.", DeprecationWarning, stacklevel=2)
        return self.notes


@dataclass
class Trace:
    """What the reasoner did for one row: every read, and the notes the answer was written from
    (`answer_prompt_ids`: the answer's prompt, exactly as the model saw it)."""

    question: str
    num_blocks: int
    steps: list[ReadStep] = field(default_factory=list)
    final_gate_scores: list[float] | None = None
    answer_prompt_ids: list[int] | None = None

    @property
    def blocks_read(self) -> list[int]:
        return [step.block for step in self.steps]

    @property
    def notes(self) -> str:
        return self.steps[-1].notes if self.steps else ""

    @property
    def memory(self) -> str:
        """Deprecated: the final notes (`notes`)."""
        warnings.warn("Trace.memory is deprecated; use Trace.notes.", DeprecationWarning, stacklevel=2)
        return self.notes
