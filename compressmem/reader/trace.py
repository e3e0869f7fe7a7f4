"""What the reasoner did for one question: every read with its exact inputs and outputs, and the final notes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    """Where a note came from: the sentence `text`, at characters `start:end` of document `document` of the
    context as the user passed it (`exact`); `exact` False: the tokenizer does not decode back to the original
    characters, so the offsets are the whole chunk's span (or, for a context given as token ids, offsets into
    the decoded blocks). `block` is the block it was read from."""

    document: int
    start: int
    end: int
    text: str
    block: int
    exact: bool = True


@dataclass
class ReadStep:
    """One read: the block read, the tokens read after it (`prompt_ids`: the update prompt, exactly as the
    model saw them), what the model wrote (text, token ids and, for rollouts, their log-probabilities), the
    notes that resulted, and the gate's scores when the block was chosen. `reused`: a raw read that read the
    KV an earlier raw read of the block computed (`ReadingConfig.keep_bits`) instead of its tokens. `source`:
    the sentence this read added to the notes and where it lies in the context (None when it added none);
    `matched`: whether the model's output pointed to that sentence (else the section's best match to the
    question stood in for an output that pointed nowhere)."""

    block: int
    notes: str
    output: str
    prompt_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] | None = None
    gate_scores: list[float] | None = None
    recall: bool = False
    reused: bool = False
    source: Source | None = None
    matched: bool = False

    @property
    def memory(self) -> str:
        """Deprecated: the notes after this read (`notes`)."""
        warnings.warn("ReadStep.memory is deprecated; use ReadStep.notes.", DeprecationWarning, stacklevel=2)
        return self.notes


@dataclass(frozen=True)
class Attempt:
    """An answer after `reads` reads, and the judge's decision on it: `grounded` (presented as found) or not, and
    why. `by`: "notes" (written from the notes by the answer prompt) or "read" (the read's own output, tried when
    the answer written from the notes is not grounded)."""

    reads: int
    answer: str
    grounded: bool
    reason: str
    by: str = "notes"


@dataclass
class Trace:
    """What the reasoner did for one row: every read, and the notes the answer was written from
    (`answer_prompt_ids`: the answer's prompt, exactly as the model saw it; None when the answer given was not
    written from the notes).

    `attempts`: every answer written from the notes (after each read that added one) with the judge's
    verdict; `answer_ids`: the first one judged grounded in the notes, which is the answer given.
    `quote`: the notes' sentences given instead of an answer that found their number or name but said more
    than they do (`reader.judge.Verdict.quote`). `outcome`: "answered" (a grounded answer), "quoted" (the
    quote, marked as one by `PromptConfig.quote_template`), "not found" (neither within the read budget: the
    configured not-found text is given), or None when no check is made (`PromptConfig.not_found` None, as in
    MemAgent mode: an answer is generated from whatever notes there are). `found` is False for "not found",
    True otherwise (None when unchecked). `judge` and `judge_reason`: which judge decided, and why that one.
    `missing_terms`: key terms of the question (names, numbers, keys) that no block of the bank holds, so that
    nothing was read (None: not checked, which needs the lexical gate's index)."""

    question: str
    num_blocks: int
    steps: list[ReadStep] = field(default_factory=list)
    final_gate_scores: list[float] | None = None
    answer_prompt_ids: list[int] | None = None
    found: bool | None = None
    missing_terms: list[str] | None = None
    attempts: list[Attempt] = field(default_factory=list)
    answer_ids: list[int] | None = None
    quote: str | None = None
    outcome: str | None = None
    judge: str | None = None
    judge_reason: str = ""

    @property
    def blocks_read(self) -> list[int]:
        return [step.block for step in self.steps]

    @property
    def notes(self) -> str:
        return self.steps[-1].notes if self.steps else ""

    @property
    def sources(self) -> list[Source]:
        """Where each note came from, in the order the notes were taken."""
        return [step.source for step in self.steps if step.source is not None]

    @property
    def memory(self) -> str:
        """Deprecated: the final notes (`notes`)."""
        warnings.warn("Trace.memory is deprecated; use Trace.notes.", DeprecationWarning, stacklevel=2)
        return self.notes
