"""RULER-HQA: a HotpotQA question's gold paragraphs padded with other questions' paragraphs.

Built as RULER builds it: keep the question's supporting paragraphs, add paragraphs from the rest
of the file (its own distractors first) until the context reaches the target token length, shuffle
the paragraph order with the seed. Evidence spans are the supporting sentences themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from .cases import EvalCase, case_rng
from .haystack import count_tokens


@dataclass(frozen=True)
class Paragraph:
    title: str
    sentences: tuple[str, ...]

    def header(self, number: int) -> str:
        return f"Document {number}:\n{self.title}\n"

    def text(self, number: int) -> str:
        return self.header(number) + "".join(self.sentences)


@dataclass(frozen=True)
class HotpotQuestion:
    question: str
    answer: str
    supporting: tuple[tuple[str, int], ...]  # (title, sentence index)
    paragraphs: tuple[Paragraph, ...]


@lru_cache(maxsize=4)
def load_hotpotqa(path: str | Path) -> tuple[HotpotQuestion, ...]:
    """Questions from a file in the original HotpotQA layout (a JSON list, or JSON Lines)."""
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    records = (
        json.loads(raw)
        if raw.lstrip().startswith("[")
        else [json.loads(line) for line in raw.splitlines() if line.strip()]
    )
    questions = []
    for number, record in enumerate(records):
        missing = {"question", "answer", "supporting_facts", "context"} - set(record)
        if missing:
            raise ValueError(f"{path}: record {number} lacks HotpotQA fields {sorted(missing)}.")
        paragraphs = tuple(Paragraph(title, tuple(sentences)) for title, sentences in record["context"])
        supporting = tuple((title, int(sentence)) for title, sentence in record["supporting_facts"])
        questions.append(HotpotQuestion(record["question"], str(record["answer"]), supporting, paragraphs))
    if not questions:
        raise ValueError(f"{path} holds no HotpotQA questions.")
    return tuple(questions)


def hotpotqa(tokenizer: PreTrainedTokenizerBase, path: str | Path, length: int, seed: int, index: int) -> EvalCase:
    """The question the seed picks for `index`, its gold paragraphs padded to `length` tokens."""
    questions = load_hotpotqa(str(path))
    rng = case_rng("hotpotqa", length, seed, index)
    order = list(range(len(questions)))
    case_rng("hotpotqa-order", 0, seed, 0).shuffle(order)
    target = questions[order[index % len(questions)]]
    gold_titles = {title for title, _ in target.supporting}
    gold = [p for p in target.paragraphs if p.title in gold_titles]
    others = [q for q in questions if q is not target]
    rng.shuffle(others)
    pool = [p for p in target.paragraphs if p.title not in gold_titles] + [p for q in others for p in q.paragraphs]
    chosen = _pad(tokenizer, gold, pool, length, path)
    rng.shuffle(chosen)
    texts, evidence, position = [], [], 0
    for number, paragraph in enumerate(chosen, start=1):
        texts.append(paragraph.text(number) + "\n\n")
        if paragraph.title in gold_titles:
            evidence += _sentence_spans(paragraph, position + len(paragraph.header(number)), target.supporting)
        position += len(texts[-1])
    return EvalCase(
        task="hotpotqa",
        case_id=f"hotpotqa-{length}-{seed}-{index}",
        context="".join(texts),
        question=target.question,
        answers=(target.answer,),
        evidence=tuple(evidence),
        length=length,
        seed=seed,
        metadata={"gold_titles": sorted(gold_titles), "paragraphs": len(chosen)},
    )


def _pad(
    tokenizer: PreTrainedTokenizerBase, gold: list[Paragraph], pool: list[Paragraph], length: int, path: str | Path
) -> list[Paragraph]:
    """Gold paragraphs plus pool paragraphs (no title twice) while the total stays within `length`."""
    chosen = list(gold)
    titles = {p.title for p in gold}
    total = sum(count_tokens(tokenizer, p.text(99) + "\n\n") for p in gold)
    for paragraph in pool:
        if paragraph.title in titles:
            continue
        size = count_tokens(tokenizer, paragraph.text(99) + "\n\n")
        if total + size > length:
            return chosen
        chosen.append(paragraph)
        titles.add(paragraph.title)
        total += size
    raise ValueError(
        f"{path} holds only about {total} tokens of distinct paragraphs, fewer than the {length} "
        "asked for; point --hotpotqa-file at a larger HotpotQA file or ask for a shorter length."
    )


def _sentence_spans(paragraph: Paragraph, start: int, supporting: tuple[tuple[str, int], ...]) -> list[tuple[int, int]]:
    """Character spans of the paragraph's supporting sentences, its sentences beginning at `start`."""
    spans, position = [], start
    for i, sentence in enumerate(paragraph.sentences):
        if (paragraph.title, i) in supporting:
            spans.append((position, position + len(sentence)))
        position += len(sentence)
    return spans
