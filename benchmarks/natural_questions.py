"""Natural questions over `examples/long_document.txt`: hand-written, worded unlike the text, some unanswerable.

`benchmarks/natural_questions.json` holds each question, its gold answers (several acceptable forms; empty for a
question the document does not answer) and its evidence: the exact sentence of the document that answers it, or,
for an unanswerable question, the sentence that makes it tempting (the lighthouse vault's code for a question
about the harbour vault's). The document is compressed once into a bank and every question is answered from it
with `model.answer(question, bank=bank, return_sources=True)`.

Reported for the configuration: answers right (a gold answer inside the answer, scored by
`compressmem.eval.scoring`: a "not found" scores 0), "not found" on answerable questions (false refusals),
"not found" on unanswerable ones (right refusals), invented answers (a number or a name the document does not
hold), the gate's evidence recall (the block holding the evidence sentence, found by the bank's character spans,
among `trace.blocks_read`), and seconds per question. The ceiling: the base model alone (chat template, greedy,
64 new tokens) given only the block holding the evidence sentence and the question.

The evaluation's rules are its own: nothing here imports `compressmem.reader`.

    python benchmarks/natural_questions.py                      # the default configuration (lexical gate)
    python benchmarks/natural_questions.py --gate semantic --top-k 4
    python benchmarks/natural_questions.py --config my_config.json --name mine --limit 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "benchmarks" / "natural_questions.json"
DOCUMENT = ROOT / "examples" / "long_document.txt"
RESULTS = ROOT / "benchmarks" / "results"
# the library's own section header, then the question: no instruction to refuse, as a plain chat would ask
CEILING_PROMPT = "Here is one section of a long document:\n\n{section}\n\n{question}"


def load_questions(path: Path = QUESTIONS) -> list[dict[str, Any]]:
    """The question set: a list of {"question", "answers", "evidence"}."""
    return json.loads(path.read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="a MemoryConfig JSON (MemoryConfig.to_dict's layout)")
    parser.add_argument("--gate", help="gate kind (lexical, semantic, attention, head) or 'none' to read every block")
    parser.add_argument("--top-k", type=int, help="blocks the gate passes")
    parser.add_argument("--chunk-size", type=int, help="tokens per chunk (block)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--limit", type=int, help="only the first N answerable and N/3 (at least 2) unanswerable ones")
    parser.add_argument("--start", type=int, default=0, help="skip the first N questions (to finish a run cut short)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the base model over the evidence block")
    parser.add_argument("--name", help="the configuration's name in the results file (default: from the flags)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from compressmem import DEFAULT_MODEL, ChunkingConfig, CompressedMemoryModel, GateConfig, MemoryConfig
    from compressmem.eval.scoring import invented_terms, score_answer

    torch.manual_seed(0)
    model = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, show_progress=False)
    config = MemoryConfig.from_dict(json.loads(args.config.read_text())) if args.config else model.memory_config
    if args.chunk_size:
        config = config.replace(chunking=ChunkingConfig(args.chunk_size))
    if args.gate == "none":
        config = config.ungated()
    elif args.gate or args.top_k:
        kind = args.gate or (config.gate.kind if config.gate else "lexical")
        config = config.replace(gate=GateConfig(kind, top_k=args.top_k or (config.gate.top_k if config.gate else 4)))
    name = args.name or _name(args, config)
    model = model.with_config(config, show_progress=False)

    document = DOCUMENT.read_text(encoding="utf-8")
    questions = load_questions()
    questions = questions[args.start :]
    if args.limit:
        answerable = [q for q in questions if q["answers"]][: args.limit]
        questions = answerable + [q for q in questions if not q["answers"]][: max(2, args.limit // 3)]
    start = time.perf_counter()
    bank = model.compress(document)
    compress_seconds = time.perf_counter() - start
    print(f"{name}: {len(bank)} blocks of {bank.num_tokens} tokens, compressed in {compress_seconds:.1f} s", flush=True)

    records = []
    for number, item in enumerate(questions):
        evidence_start = document.index(item["evidence"])
        evidence_blocks = bank.blocks_overlapping([(evidence_start, evidence_start + len(item["evidence"]))])
        start = time.perf_counter()
        answer = model.answer(
            item["question"], bank=bank, return_sources=True, max_new_tokens=args.max_new_tokens, do_sample=False
        )
        seconds = time.perf_counter() - start
        read = list(answer.trace.blocks_read)
        scores = score_answer(_task(item), answer.text, item["answers"], context=document)
        record = {
            "question": item["question"],
            "answers": item["answers"],
            "answerable": bool(item["answers"]),
            "evidence": item["evidence"],
            "evidence_blocks": evidence_blocks,
            "blocks_read": read,
            "evidence_read": bool(set(read) & set(evidence_blocks)),
            "prediction": answer.text,
            "found": answer.found,
            "right": scores["substring"],
            "refused": scores["refused"],
            "invented": scores["invented"],
            "invented_terms": invented_terms(answer.text, document),
            "seconds": seconds,
            "attempts": [
                {
                    "answer": a.answer,
                    "grounded": a.grounded,
                    "reason": a.reason,
                    "by": a.by,
                    "notes": answer.trace.steps[a.reads - 1].notes,  # what it was judged against
                }
                for a in answer.trace.attempts
            ],
        }
        if not args.no_ceiling:
            record.update(_ceiling(model, document, bank, evidence_blocks, item, args.max_new_tokens))
        records.append(record)
        print(
            f"[{number + 1}/{len(questions)}] {record['right']:.0f} {'read' if record['evidence_read'] else 'MISSED'} "
            f"{seconds:.1f}s {item['question']!r} -> {answer.text!r}"
            + (
                f" | ceiling {record['ceiling_right']:.0f} {record['ceiling_prediction']!r}"
                if not args.no_ceiling
                else ""
            ),
            flush=True,
        )
        _write(args.out / f"natural_questions-{name}.json", name, config, len(bank), compress_seconds, records)
    table = _table(name, len(bank), _summary(records, not args.no_ceiling))
    print(table)
    print(f"wrote {args.out / f'natural_questions-{name}.json'}")


def _write(path: Path, name: str, config, blocks: int, compress_seconds: float, records: list[dict]) -> None:
    """The results so far (rewritten after every question, so an interrupted run keeps what it did)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = _summary(records, "ceiling_right" in records[0])
    data = {
        "config": name,
        "memory_config": config.to_dict(),
        "blocks": blocks,
        "compress_seconds": compress_seconds,
        "summary": summary,
        "questions": records,
    }
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def _ceiling(model, document: str, bank, evidence_blocks: list[int], item: dict, max_new_tokens: int) -> dict:
    """The base model alone over the block holding the evidence sentence (its ~512-token section)."""
    import torch

    from compressmem.eval.scoring import score_answer

    spans = [bank.infos[i].char_span for i in evidence_blocks]
    section = document[min(s[0] for s in spans) : max(s[1] for s in spans)]
    messages = [{"role": "user", "content": CEILING_PROMPT.format(section=section, question=item["question"])}]
    encoded = model.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    ids = encoded["input_ids"].to(model.model.device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.tokenizer.pad_token_id or model.tokenizer.eos_token_id,
        )
    seconds = time.perf_counter() - start
    text = model.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    scores = score_answer(_task(item), text, item["answers"], context=document)
    return {
        "ceiling_prediction": text,
        "ceiling_right": scores["substring"],
        "ceiling_refused": scores["refused"],
        "ceiling_invented": scores["invented"],
        "ceiling_seconds": seconds,
    }


def _task(item: dict) -> str:
    """Scored as a question with an answer, or, without one, as `absent` (right only when it says not found)."""
    return "natural" if item["answers"] else "absent"


def _summary(records: list[dict], ceiling: bool) -> dict[str, Any]:
    answerable = [r for r in records if r["answerable"]]
    unanswerable = [r for r in records if not r["answerable"]]

    def rate(rows: list[dict], key: str) -> float | None:
        return mean(float(r[key]) for r in rows) if rows else None

    summary = {
        "questions": len(records),
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "right_answerable": rate(answerable, "right"),
        "not_found_answerable": rate(answerable, "refused"),
        "not_found_unanswerable": rate(unanswerable, "refused"),
        "invented": rate(records, "invented"),
        "invented_answerable": rate(answerable, "invented"),
        "invented_unanswerable": rate(unanswerable, "invented"),
        "evidence_recall": rate(answerable, "evidence_read"),
        "blocks_read": mean(len(r["blocks_read"]) for r in records) if records else None,
        "seconds": mean(r["seconds"] for r in records) if records else None,
    }
    if ceiling:
        summary.update(
            {
                "ceiling_right_answerable": rate(answerable, "ceiling_right"),
                "ceiling_not_found_answerable": rate(answerable, "ceiling_refused"),
                "ceiling_not_found_unanswerable": rate(unanswerable, "ceiling_refused"),
                "ceiling_invented": rate(records, "ceiling_invented"),
                "ceiling_seconds": mean(r["ceiling_seconds"] for r in records) if records else None,
            }
        )
    return summary


def _table(name: str, blocks: int, s: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    lines = [
        f"Natural questions over examples/long_document.txt ({s['answerable']} answerable, "
        f"{s['unanswerable']} unanswerable; {blocks} blocks)",
        "",
        "| system | right (answerable) | not found (answerable) | not found (unanswerable) | invented (all) "
        "| evidence recall | blocks read | s / question |",
        "|---|---|---|---|---|---|---|---|",
        f"| {name} | {pct(s['right_answerable'])} | {pct(s['not_found_answerable'])} | "
        f"{pct(s['not_found_unanswerable'])} | {pct(s['invented'])} | {pct(s['evidence_recall'])} | "
        f"{s['blocks_read']:.2f} | {s['seconds']:.1f} |",
    ]
    if "ceiling_right_answerable" in s:
        lines.append(
            f"| ceiling: base model over the evidence block | {pct(s['ceiling_right_answerable'])} | "
            f"{pct(s['ceiling_not_found_answerable'])} | {pct(s['ceiling_not_found_unanswerable'])} | "
            f"{pct(s['ceiling_invented'])} | 100% (given) | 1 | {s['ceiling_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _name(args: argparse.Namespace, config) -> str:
    if args.config:
        base = args.config.stem
    else:
        base = config.gate.kind if config.gate else "none"
        if config.gate and config.gate.top_k:
            base += f"-top{config.gate.top_k}"
    if args.chunk_size:
        base += f"-chunk{args.chunk_size}"
    return base + (f"-first{args.limit}" if args.limit else "")


if __name__ == "__main__":
    main()
