"""Which blocks four reads reach under ways of mixing the gate's scores for the question alone and for the
question with the notes, over `examples/long_document.txt` (the default settings' blocks and semantic gate).

Questions: the answerable ones of `benchmarks/natural_questions.json` and the README's reworded questions that
have an evidence sentence below (two of them need two hops: her birthplace, then what it is famous for). Notes
are simulated, so that the orders are compared on the same notes without the 135M model's noise: after each
read the block's sentence that bears on the question with the most of its words (and of the notes' key terms)
is noted, as the reader does when a read's output points nowhere. A question counts when its evidence block is
among the four read. Orders:

- `noted`: the question with the notes (release 0.5.0);
- `mean`: the mean of the two scores;
- `max`: per block, the higher of the two scores (the reader's order after 0.5.0);
- `rank-max`: the higher of the two reciprocal ranks;
- `rank-sum`: the sum of the two reciprocal ranks (fusion);
- `alternate`: the question alone before odd reads, the question with the notes before even ones.

    python benchmarks/gate_order.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
READS = 4
TWO_HOPS = {  # README questions reworded, with the sentence holding the answer
    "What is Mara Quill's home town famous for?": "The town of Eldermoor is famous for its copper bells.",
    "What is the town where Mara Quill was born famous for?": "The town of Eldermoor is famous for its copper bells.",
    "What is the name of Mara Quill's home town?": "Mara Quill was born in the town of Eldermoor.",
    "Where was Mara Quill born?": "Mara Quill was born in the town of Eldermoor.",
    "Which number opens the lighthouse vault?": "The secret code for the lighthouse vault is 4719283.",
}
ORDERS = ("noted", "mean", "max", "rank-max", "rank-sum", "alternate")


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """1 / (60 + rank) of each block (rank 1: the highest score)."""
    order = scores.argsort(descending=True)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    return 1.0 / (60 + ranks)


def _mixed(order: str, alone: torch.Tensor, noted: torch.Tensor, step: int) -> torch.Tensor:
    return {
        "noted": lambda: noted,
        "mean": lambda: (alone + noted) / 2,
        "max": lambda: torch.maximum(alone, noted),
        "rank-max": lambda: torch.maximum(_ranks(alone), _ranks(noted)),
        "rank-sum": lambda: _ranks(alone) + _ranks(noted),
        "alternate": lambda: alone if step % 2 == 0 else noted,
    }[order]()


def main() -> None:
    from compressmem import DEFAULT_MODEL, CompressedMemoryModel
    from compressmem.config import PromptConfig
    from compressmem.gate.semantic import SemanticGate
    from compressmem.reader.quotes import find_quote

    model = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, show_progress=False)
    document = (ROOT / "examples" / "long_document.txt").read_text(encoding="utf-8")
    bank = model.compress(document)
    gate = SemanticGate(model.tokenizer)
    index = gate.index(bank, model.model)
    template = PromptConfig().gate_template
    texts = [model.tokenizer.decode(bank.token_ids(i), skip_special_tokens=True) for i in range(len(bank))]

    def scores(question: str, notes: str) -> torch.Tensor:
        return gate.score(None, [template.format(question=question, notes=notes).strip()], index)[0].float()

    def reads(question: str, order: str) -> list[int]:
        notes, read = "", []
        alone = scores(question, "")
        for step in range(READS):
            mixed = _mixed(order, alone, scores(question, notes) if notes else alone, step).clone()
            mixed[read] = -torch.inf
            block = int(mixed.argmax())
            read.append(block)
            quote = find_quote(question, texts[block], question, notes, 0.8)
            sentence = None if quote is None else texts[block][quote.start : quote.end]
            if sentence and sentence not in notes:
                notes = f"{notes}\n{sentence}".strip()
        return read

    items = [q for q in json.loads((ROOT / "benchmarks" / "natural_questions.json").read_text()) if q["answers"]]
    items += [{"question": question, "evidence": evidence} for question, evidence in TWO_HOPS.items()]
    reached = dict.fromkeys(ORDERS, 0)
    for item in items:
        start = document.index(item["evidence"])
        evidence = set(bank.blocks_overlapping([(start, start + len(item["evidence"]))]))
        row = []
        for order in ORDERS:
            hit = bool(evidence & set(reads(item["question"], order)))
            reached[order] += hit
            row.append("+" if hit else "-")
        print(" ".join(row), item["question"], flush=True)
    print(f"\nevidence among {READS} reads, {len(items)} questions ({' '.join(ORDERS)} above):")
    for order in ORDERS:
        print(f"  {order:10s} {reached[order]}/{len(items)}")


if __name__ == "__main__":
    main()
