"""The scan loop: gate the blocks, read the passed ones into the notes, in order.

Rows of a batch advance together: at each step every row whose gate passed a block joins one
batched decoding call that writes that row's notes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..bank import KeptBlock, MemoryBank, owner_token
from ..config import DEFAULT_GROUP, GateConfig, NotesConfig, ReadingConfig
from ..gate import Gate, finite_scores
from ..hf.adapters import ReasonerAdapter, adapter_active
from ..hf.sliding import check_question
from ..hf.tokens import decode_text
from ..quantize import CHANNELS, TOKENS, quantize
from .judge import Judge, extract
from .notes import update_notes
from .prompts import PromptBuilder
from .quotes import Quote, asks_for_all, echoes, key_terms
from .step import check_generation, generate_steps, step_input
from .trace import Attempt, ReadStep, Source, Trace


@dataclass(frozen=True)
class Draft:
    """An answer written from the notes: the answer prompt's ids, the generated ids, and their text."""

    prompt_ids: torch.Tensor
    ids: torch.Tensor
    text: str


Answerer = Callable[[list[int], list[str]], list[Draft]]
"""Writes answers: given row numbers and each row's notes, one `Draft` per row."""


@dataclass
class _Row:
    bank: MemoryBank
    trace: Trace
    cursor: int = 0
    recalling: bool = False
    done: bool = False
    tried: str = ""  # the notes an answer was last written from
    heard: int = 0  # reads whose own output was judged as an answer
    alone: torch.Tensor | None = None  # the gate's scores for the question alone: they never change, so kept

    def next_block(self, scores: torch.Tensor | None, gate: GateConfig | None, reading: ReadingConfig) -> int | None:
        """The next block to read, or None when this row has finished reading."""
        read = set(self.trace.blocks_read)
        if reading.max_steps is not None and len(read) >= reading.max_steps:
            return None
        if scores is None or gate is None:
            return self._advance(self.cursor) if self.cursor < len(self.bank) else None
        passing = _passing(scores, gate)
        if reading.order == "score":  # at most top_k reads, however the notes reorder the blocks
            full = gate.top_k is not None and len(read) >= gate.top_k
            return None if full else self._best_unread(scores, passing, read)
        if not self.recalling:
            ahead = [b for b in passing.nonzero().flatten().tolist() if b >= self.cursor and b not in read]
            if ahead:
                return self._advance(ahead[0])
            self.recalling = reading.recall
        return self._best_unread(scores, passing, read) if self.recalling else None

    @staticmethod
    def _best_unread(scores: torch.Tensor, passing: torch.Tensor, read: set[int]) -> int | None:
        candidates = passing.nonzero().flatten()
        order = candidates[scores[candidates].argsort(descending=True, stable=True)].tolist()
        unread = [b for b in order if b not in read]
        return unread[0] if unread else None

    def _advance(self, block: int) -> int:
        self.cursor = block + 1
        return block


class Reasoner:
    """Reads memory banks into notes; `run()` returns one `Trace` per question."""

    def __init__(
        self,
        model: PreTrainedModel,
        prompts: PromptBuilder,
        reading: ReadingConfig,
        notes: NotesConfig,
        gate: Gate | None,
        gate_config: GateConfig | None,
        adapter: ReasonerAdapter | None = None,
        judge: Judge | None = None,
        judge_reason: str = "",
    ) -> None:
        self.model = model
        self.judge = judge
        self.judge_reason = judge_reason
        self.prompts = prompts
        self.reading = reading
        self.notes = notes
        self.gate = gate
        self.gate_config = gate_config
        self.adapter = adapter

    def active(self) -> contextlib.AbstractContextManager:
        """The reasoner's own adapter switched on (every adapter off without one), for every pass that reads
        or writes."""
        return adapter_active(self.model, self.adapter.name if self.adapter is not None else None)

    def run(
        self,
        questions: list[str],
        banks: list[MemoryBank],
        show_progress: bool = True,
        generation: dict[str, Any] | None = None,
        logprobs: bool = False,
        answer: Answerer | None = None,
    ) -> list[Trace]:
        """Read each row's bank into notes. `generation` (`do_sample`, `temperature`, `min_new_tokens`, ...)
        replaces greedy decoding of the notes, as reinforcement-learning rollouts need; `logprobs` records
        each written token's log-probability in the trace.

        With `answer` (and a judge), a row's answer is written from its notes after every read that added a
        note, and the judge decides whether it is grounded in them: reading stops at the first grounded answer
        (with `until='answered'`), else goes on to the next block in gate order up to the read budget, and a
        row that never gets one is not found (`Trace.outcome`). Without, no answer is written or judged."""
        check_generation(generation)
        instructions = self.prompts.update_ids("", "").numel()  # the update prompt without question and notes
        for question, bank in zip(questions, banks):
            span = bank.prefix_ids.numel() + (int(bank.infos.column("tokens").max()) if len(bank) else 0)
            size = len(self.prompts.encode(question))
            check_question(self.model, size, span, instructions, self.notes, self.reading.mode == "compressed")
        rows = [_Row(bank, Trace(question, len(bank))) for question, bank in zip(questions, banks)]
        judged = answer is not None and self.judge is not None
        indexes = {}
        if self.gate is not None:
            for bank in banks:
                if id(bank) not in indexes:
                    indexes[id(bank)] = self.gate.index(bank, self.model)
        for row in rows if judged else []:
            row.trace.judge, row.trace.judge_reason = self.judge.name, self.judge_reason  # type: ignore[union-attr]
            if self.reading.until == "answered":
                self._check_terms(row, indexes.get(id(row.bank)))
        bar = tqdm(desc="Reading", unit="block", disable=not show_progress, leave=False)
        while True:
            pending = [row for row in rows if not row.done]
            if not pending:
                break
            scores = self._score(pending, indexes)
            reads = []
            for row, row_scores in zip(pending, scores):
                block = row.next_block(row_scores, self.gate_config, self.reading)
                if block is None:
                    row.done = True
                    row.trace.final_gate_scores = None if row_scores is None else row_scores.tolist()
                else:
                    reads.append((row, block, row_scores))
            if reads:
                self._read(reads, generation, logprobs)
                bar.update(len(reads))
                early = self.reading.until == "answered"
                ready = [row for row, _, _ in reads if early and not asks_for_all(row.trace.question)]
                if judged and ready:
                    self._attempt(rows, ready, answer)  # type: ignore[arg-type]
                for row, _, row_scores in reads:
                    if row.trace.answer_ids is not None:
                        row.done = True
                        row.trace.final_gate_scores = None if row_scores is None else row_scores.tolist()
        bar.close()
        if judged:
            unanswered = [row for row in rows if row.trace.answer_ids is None]
            self._attempt(rows, unanswered, answer)  # type: ignore[arg-type]
            for row in rows:
                trace = row.trace
                if trace.answer_ids is None and trace.quote is None and trace.notes.strip():
                    trace.quote = extract(trace.question, trace.notes)  # the note the garbled answers came from
                answered, quoted = trace.answer_ids is not None, trace.quote is not None
                trace.outcome = "answered" if answered else "quoted" if quoted else "not found"
                trace.found = trace.outcome != "not found"
        return [row.trace for row in rows]

    def _attempt(self, rows: list[_Row], ready: list[_Row], answer: Answerer) -> None:
        """Write an answer for each `ready` row whose notes changed since its last answer, and keep the first
        the judge finds grounded (`Trace.answer_ids`), or the quote a judge gives for an answer that found a
        value of the notes but said more than they do (`Trace.quote`); every attempt is recorded in the trace."""
        for row in ready:  # notes unchanged since the last answer: the read's own output may still say it
            if row.trace.notes.strip() and row.trace.notes == row.tried and row.trace.answer_ids is None:
                self._read_answers(row)
        ready = [row for row in ready if row.trace.notes.strip() and row.trace.notes != row.tried]
        if not ready:
            return
        written = answer([rows.index(row) for row in ready], [row.trace.notes for row in ready])
        for row, draft in zip(ready, written):
            row.tried = row.trace.notes
            text = draft.text
            verdict = self.judge.judge(row.trace.question, row.trace.notes, text)  # type: ignore[union-attr]
            row.trace.attempts.append(Attempt(len(row.trace.steps), text, verdict.grounded, verdict.reason))
            if verdict.grounded:
                row.trace.answer_ids = draft.ids.tolist()
                row.trace.answer_prompt_ids = draft.prompt_ids.tolist()
            elif not self._read_answers(row) and verdict.quote is not None and row.trace.quote is None:
                row.trace.quote = verdict.quote  # the value found in words of the model's own: quoted if nothing better

    def _read_answers(self, row: _Row) -> bool:
        """Whether the last read's own output, written with the section in view, is an answer the judge finds
        grounded in the notes (a small model often says it right there, then garbles it when answering from the
        notes alone); if so it is the answer given, and the attempt is recorded. An output that does not echo
        the question (`echoes`) describes the section ("The town where Mara Quill was born is Eldermoor", asked
        what that town is famous for) and is not tried."""
        output = row.trace.steps[-1].output.strip() if row.trace.steps else ""
        if not output or row.heard == len(row.trace.steps) or not echoes(output, row.trace.question):
            return False  # none, judged already, or a description of the section rather than an answer
        row.heard = len(row.trace.steps)
        verdict = self.judge.judge(row.trace.question, row.trace.notes, output)  # type: ignore[union-attr]
        row.trace.attempts.append(Attempt(len(row.trace.steps), output, verdict.grounded, verdict.reason, by="read"))
        if verdict.grounded:
            ids = self.prompts.encode(output).tolist()
            eos = self.prompts.tokenizer.eos_token_id
            row.trace.answer_ids = ids if eos is None else [*ids, eos]
        return verdict.grounded

    def _check_terms(self, row: _Row, index: object) -> None:
        """Finish a row before it reads when its question names a key term the bank's words never hold (for a
        question asking for all matches: when it names none the bank holds), as far as the gate can tell: no
        note could ever cover it (notes are sentences of the bank), so it is not found, at no cost."""
        if self.gate is None:
            return
        terms = key_terms(row.trace.question)
        missing = self.gate.missing(index, terms)
        if missing is None:
            return
        row.trace.missing_terms = missing
        if asks_for_all(row.trace.question):  # any one of its terms found is an answer
            row.done = bool(terms) and len(missing) == len(terms)
        else:
            row.done = bool(missing)

    def _score(self, rows: list[_Row], indexes: dict) -> list[torch.Tensor | None]:
        """Each row's gate scores: per block, the higher of its scores for the question with the notes and for the
        question alone (one score before the first note). The notes steer a second hop to the block that names what
        the first found ("Eldermoor" noted for "What is Mara Quill's home town famous for?"); the question alone
        keeps its own best blocks in the running when a read noted something else (a note on another Tilda
        otherwise pulls every later read towards Tildas). A mean of the two lets a block that only one ranks high
        fall behind blocks middling on both, and lost the two-hop question (benchmarks/RESULTS.md). The question
        alone's scores are kept from the first read, so each later read scores one prompt per row, as before."""
        if self.gate is None:
            return [None] * len(rows)
        scores: list[torch.Tensor | None] = [None] * len(rows)
        for bank_id, index in indexes.items():
            members = [i for i, row in enumerate(rows) if id(row.bank) == bank_id]
            if not members:
                continue
            prompts = [self.prompts.gate_text(rows[i].trace.question, rows[i].trace.notes) for i in members]
            unknown = [i for i in members if rows[i].alone is None and rows[i].trace.notes]  # none when read from 0
            prompts += [self.prompts.gate_text(rows[i].trace.question, "") for i in unknown]
            with adapter_active(self.model, None):
                scored = finite_scores(self.gate.score(self.model, prompts, index), type(self.gate).__name__).cpu()
            for i, row_scores in zip(unknown, scored[len(members) :]):
                rows[i].alone = row_scores
            for i, row_scores in zip(members, scored):
                row = rows[i]
                if not row.trace.notes:  # the prompt was the question alone
                    row.alone = row_scores
                scores[i] = row_scores if row.alone is None else torch.maximum(row_scores, row.alone)
        return scores

    def _read(
        self, reads: list[tuple[_Row, int, torch.Tensor | None]], generation: dict[str, Any] | None, logprobs: bool
    ) -> None:
        prompts = [self.prompts.update_ids(row.trace.question, row.trace.notes) for row, _, _ in reads]
        device, dtype = self.model.device, self.model.dtype  # a bank may come from another dtype
        reuse = self.keeper if self.reading.keep_bits and not logprobs else None  # rollouts are scored raw
        inputs = [
            step_input(row.bank, block, prompt, self.reading.mode, reuse=reuse, device=device, dtype=dtype)
            for (row, block, _), prompt in zip(reads, prompts)
        ]
        keep = [
            (0, row.bank.prefix_ids.numel() + row.bank.infos[block].num_tokens)
            if reuse is not None and item.keys is None
            else None
            for (row, block, _), item in zip(reads, inputs)
        ]
        tokenizer = self.prompts.tokenizer
        with self.active():
            written = generate_steps(
                self.model, tokenizer, inputs, self.notes.budget, generation, logprobs, keep if any(keep) else None
            )
        for (row, block, row_scores), prompt, item, (ids, scored, kv) in zip(reads, prompts, inputs, written):
            if kv is not None:
                self._keep(row.bank, block, *kv)
            output = decode_text(tokenizer, ids, skip_special_tokens=True).strip()
            section = _section(row.bank, block, tokenizer)
            notes, quote = update_notes(
                row.trace.notes, output, section.text, row.trace.question, self.notes, tokenizer, section.within
            )
            row.trace.steps.append(
                ReadStep(
                    block=block,
                    notes=notes,
                    output=output,
                    prompt_ids=prompt.tolist(),
                    output_ids=ids.tolist(),
                    output_logprobs=None if scored is None else scored.tolist(),
                    recall=row.recalling,
                    gate_scores=None if row_scores is None else row_scores.tolist(),
                    reused=self.reading.mode == "raw" and item.keys is not None,
                    source=None if quote is None else _source(row.bank, block, section, quote),
                    matched=quote is not None and quote.matched,
                )
            )

    def _keep(self, bank: MemoryBank, block: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep the KV a raw read of `block` computed (prefix and chunk), the chunk's quantized, in `bank.kept`."""
        p = bank.prefix_ids.numel()
        bits, mib = self.reading.keep_bits, self.reading.keep_mib
        if not bits or mib is None:
            raise RuntimeError("KV is kept only with reading.keep_bits set, which gives reading.keep_mib a value.")
        kept = KeptBlock(
            quantize(keys[:, :, p:], bits, DEFAULT_GROUP, TOKENS),
            quantize(values[:, :, p:], bits, DEFAULT_GROUP, CHANNELS),
        )
        prefix = (keys[:, :, :p], values[:, :, :p])  # copied by `put` only when this owner has no prefix kept yet
        bank.kept.put(block, kept, prefix, mib << 20, self.keeper)

    @property
    def keeper(self) -> tuple:
        """Who computes the KV a raw read keeps: the model (by `owner_token`, which a later model at the same
        address never shares), the reasoner's adapter and the dtype."""
        return owner_token(self.model), None if self.adapter is None else self.adapter.name, str(self.model.dtype)


@dataclass
class _Section:
    """A block's text with its neighbours' in the same document (`first`..`last` blocks), so that a sentence the
    chunking cut in two is quoted whole; `within` is the block's own characters in `text`."""

    text: str
    within: tuple[int, int]
    first: int
    last: int


def _section(bank: MemoryBank, block: int, tokenizer: PreTrainedTokenizerBase) -> _Section:
    """`block`'s decoded text between its neighbours' (blocks that continue it in the same document)."""

    def text(b: int) -> str:
        return decode_text(tokenizer, bank.token_ids(b), skip_special_tokens=True)

    own = text(block)
    first = block - 1 if block > 0 and _continues(bank, block - 1, block) else block
    last = block + 1 if block + 1 < len(bank) and _continues(bank, block, block + 1) else block
    before = text(first) if first < block else ""
    after = text(last) if last > block else ""
    return _Section(before + own + after, (len(before), len(before) + len(own)), first, last)


def _continues(bank: MemoryBank, a: int, b: int) -> bool:
    """Whether block `b`'s chunk starts where block `a`'s ends, in the same document."""
    x, y = bank.infos[a], bank.infos[b]
    return x.document == y.document and x.token_start + x.num_tokens == y.token_start


def _source(bank: MemoryBank, block: int, section: _Section, quote: Quote) -> Source:
    """Where a quoted sentence lies in the user's context: its characters in the block's document, exact when the
    decoded text has the length of its original span (the tokenizer round-trips), else the block's span."""
    info = bank.infos[block]
    text = section.text[quote.start : quote.end]
    first, last = bank.infos[section.first].char_span, bank.infos[section.last].char_span
    if first is None or last is None or info.char_span is None:  # a context of token ids: offsets into the blocks
        return Source(info.document, quote.start, quote.end, text, block, exact=False)
    if last[1] - first[0] == len(section.text):
        return Source(info.document, first[0] + quote.start, first[0] + quote.end, text, block)
    start, end = info.char_span
    return Source(info.document, start, end, text, block, exact=False)


def _passing(scores: torch.Tensor, gate: GateConfig) -> torch.Tensor:
    """Blocks the gate lets through: among the `top_k` best and at or above `threshold`."""
    passing = torch.ones_like(scores, dtype=torch.bool)
    if gate.top_k is not None:
        passing = torch.zeros_like(passing)
        passing[scores.topk(min(gate.top_k, scores.numel())).indices] = True
    if gate.threshold is not None:
        passing &= scores >= gate.threshold
    return passing
