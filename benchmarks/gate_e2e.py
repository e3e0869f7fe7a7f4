"""Gates end to end on SmolLM2: blocks read per question and accuracy, every gate on the same banks.

Each case's context is compressed once (gate-layer keys, as the key-reading gates need) and every
gate variant answers from that same bank, so the variants differ only in which blocks they read:

- `head`: the trained gate head of a checkpoint (`--checkpoint`), reading in score order (re-score
  every block after each update, read the best unread one over the threshold);
- `head-linear`: the same head and threshold, reading in document order (the paper's linear scan);
- `attention`: the training-free attention gate, top-1 (`--attention-top-k`), document order;
- `lexical`: the training-free BM25 gate, top-1, document order (the training-free default);
- `none`: no gate, every block read in order.

    python benchmarks/gate_e2e.py --checkpoint compressmem/checkpoints/smollm2-135m-instruct-gate \\
        --task niah_single,variable_tracking,hotpotqa --length 32k --n 3 --out benchmarks/results/gate-e2e-32k
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path

VARIANTS = ("head", "head-linear", "attention", "lexical", "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint with a trained gate head")
    parser.add_argument("--task", default="niah_single,variable_tracking,hotpotqa")
    parser.add_argument("--length", default="32k")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--attention-top-k", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    from compressmem import DEFAULT_MODEL, CompressedMemoryModel
    from compressmem.eval import make_cases, parse_token_counts, score_answer

    model = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, checkpoint=args.checkpoint, show_progress=False)
    variants = {name: model.with_config(config, show_progress=False)
                for name, config in _variant_configs(model.memory_config, args.attention_top_k).items()
                if name in args.variants.split(",")}
    length = parse_token_counts(args.length)[0]
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    with open(args.out / "cases.jsonl", "w", encoding="utf-8") as log:
        for task in args.task.split(","):
            for case in make_cases(task, model.tokenizer, length, args.n, args.seed):
                start = time.perf_counter()
                bank = model.compress(case.context, show_progress=False)
                compress_seconds = time.perf_counter() - start
                evidence = bank.blocks_overlapping(list(case.evidence))
                prompt = model.prompt_ids(case.question)
                for name, variant in variants.items():
                    start = time.perf_counter()
                    out = variant.generate(prompt, bank=bank, max_new_tokens=args.max_new_tokens, do_sample=False,
                                           return_dict_in_generate=True)
                    answer = model.tokenizer.decode(out.sequences[0, prompt.shape[1]:], skip_special_tokens=True)
                    read = out.trace[0].blocks_read
                    record = {"task": task, "case_id": case.case_id, "variant": name, "blocks": len(bank),
                              "blocks_read": read, "evidence_blocks": evidence,
                              "evidence_recall": len(set(read) & set(evidence)) / max(len(evidence), 1),
                              "score": score_answer(task, answer, case.answers)["substring"],
                              "answer": answer.strip(), "read_seconds": time.perf_counter() - start,
                              "compress_seconds": compress_seconds}
                    records.append(record)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    print(f"{case.case_id} {name}: read {len(read)}/{len(bank)}, recall "
                          f"{record['evidence_recall']:.2f}, score {record['score']:.2f}", flush=True)
    table = _table(records, list(variants))
    (args.out / "summary.md").write_text(table, encoding="utf-8")
    print(table)


def _variant_configs(config, attention_top_k: int) -> dict:
    """Every variant over the head checkpoint's banks; the word-level gates read only their token ids."""
    from compressmem import GateConfig, ReadingConfig

    document = ReadingConfig(config.reading.mode)
    return {
        "head": config,
        "head-linear": config.replace(reading=dataclasses.replace(config.reading, order="document")),
        "attention": config.replace(gate=GateConfig("attention", top_k=attention_top_k), reading=document),
        "lexical": config.replace(gate=GateConfig("lexical"), compression=None, reading=document),
        "none": config.replace(gate=None, compression=None, reading=document),
    }


def _table(records: list[dict], variants: list[str]) -> str:
    groups = defaultdict(list)
    for record in records:
        groups[(record["task"], record["variant"])].append(record)
    lines = ["| task | gate | cases | accuracy | blocks read per question | blocks | fewer reads than no gate | "
             "evidence recall |", "|---|---|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in records):
        none = groups.get((task, "none"))
        none_reads = _mean([len(r["blocks_read"]) for r in none]) if none else None
        for variant in variants:
            rows = groups[(task, variant)]
            reads = _mean([len(r["blocks_read"]) for r in rows])
            ratio = f"{none_reads / reads:.1f}x" if none_reads and reads else "-"
            lines.append(f"| {task} | {variant} | {len(rows)} | {100 * _mean([r['score'] for r in rows]):.0f}% | "
                         f"{reads:.1f} | {_mean([r['blocks'] for r in rows]):.0f} | {ratio} | "
                         f"{100 * _mean([r['evidence_recall'] for r in rows]):.0f}% |")
    return "\n".join(lines) + "\n"


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else 0.0


if __name__ == "__main__":
    main()
