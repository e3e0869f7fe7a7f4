"""Reading until the notes answer, against reading the gate's one best block: accuracy, "not found", reads, time.

Every configuration answers the same questions from the same bank (compressed once per context, the kept KV
of raw reads cleared before every question so that no configuration profits from another's reads), in turn,
question by question, so that changes in the machine's load hit all alike. Questions: the README's example
questions over `examples/long_document.txt` plus one it does not answer, and `--n` seeded cases of each
`--tasks` task at each `--lengths` length (`absent` asks for a key that is not there: only "not found" is
right). Configurations:
- `one read`: the release-0.2 default, the lexical gate's one best block read, the answer always generated;
- `adaptive`: the default now: up to `top_k` blocks read best first, re-scored with the notes after every
  read, stopping once the notes cover the question, "not found" when they never do;
- `adaptive, 96-token outputs`: the same with reads writing up to 96 tokens (the former budget; 48 now).
Printed per configuration and task: accuracy, how often it said "not found", reads per question, how often
a note's sentence was the one the model's output pointed to, and seconds per question (mean). Run it with
`OMP_NUM_THREADS=1` on a shared machine.

    OMP_NUM_THREADS=1 python benchmarks/adaptive_reading.py --lengths 4k --n 20 --out benchmarks/results/adaptive-4k
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNANSWERED = "What is the secret code for the harbour safe?"


def configurations() -> dict:
    from compressmem import GateConfig, MemoryConfig, NotesConfig, ReadingConfig

    default = MemoryConfig()
    return {"one read": default.replace(gate=GateConfig(top_k=1), reading=ReadingConfig(order="document", until="all"),
                                        notes=NotesConfig(note_tokens=96)),
            "adaptive": default,
            "adaptive, 96-token outputs": default.replace(notes=NotesConfig(note_tokens=96))}


def questions(tokenizer, tasks: list[str], lengths: list[int], n: int) -> list[tuple[str, str, list[str], object]]:
    """(task, question, answers, context) for the README's questions and the seeded cases."""
    from compressmem.eval.tasks import make_cases

    document = (ROOT / "examples" / "long_document.txt").read_text(encoding="utf-8")
    readme = json.loads((ROOT / "examples" / "questions.json").read_text(encoding="utf-8"))
    items = [("readme", q["question"], q["answers"], document) for q in readme]
    items.append(("readme_absent", UNANSWERED, [], document))
    for task in tasks:
        for length in lengths:
            for case in make_cases(task, tokenizer, length, n):
                items.append((f"{task}-{length}", case.question, list(case.answers), case.context))
    return items


def correct(task: str, prediction: str, answers: list[str]) -> tuple[float, bool]:
    from compressmem.eval.scoring import says_not_found, score_answer

    if not answers:
        return float(says_not_found(prediction)), says_not_found(prediction)
    scored = score_answer(task.split("-")[0], prediction, answers)
    return scored["substring"], bool(scored["refused"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="niah_single,niah_multikey,absent")
    parser.add_argument("--lengths", default="4k")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--configs", default=None, help="comma-separated names; default all")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from compressmem import CompressedMemoryModel
    from compressmem.eval.tasks import parse_token_counts

    base = CompressedMemoryModel.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", show_progress=False)
    configs = configurations()
    if args.configs:
        configs = {name: configs[name] for name in args.configs.split(",")}
    models = {name: base.with_config(config, show_progress=False) for name, config in configs.items()}
    items = questions(base.tokenizer, args.tasks.split(","), parse_token_counts(args.lengths), args.n)
    args.out.mkdir(parents=True, exist_ok=True)
    records, banks = [], {}
    with open(args.out / "questions.jsonl", "w", encoding="utf-8") as sink:
        for task, question, answers, context in items:
            if id(context) not in banks:
                banks = {id(context): base.compress(context)}  # one context's bank at a time
            bank = banks[id(context)]
            for name, model in models.items():
                bank.kept.clear()
                prompt = model.prompt_ids(question)
                start = time.perf_counter()
                out = model.generate(prompt, bank=bank, max_new_tokens=48, do_sample=False,
                                     return_dict_in_generate=True)
                seconds = time.perf_counter() - start
                trace = out.trace[0]
                prediction = model.tokenizer.decode(out.sequences[0, prompt.shape[1]:], skip_special_tokens=True)
                score, refused = correct(task, prediction.strip(), answers)
                record = {"config": name, "task": task, "question": question, "answers": answers,
                          "prediction": prediction.strip(), "correct": score, "refused": refused,
                          "found": trace.found, "reads": trace.blocks_read, "seconds": seconds,
                          "notes": trace.notes, "matched": [s.matched for s in trace.steps if s.source],
                          "outputs": [s.output for s in trace.steps]}
                records.append(record)
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                print(f"{name:28s} {task:22s} {score:.2f} {seconds:6.1f}s reads={trace.blocks_read} "
                      f"{prediction.strip()[:70]!r}", flush=True)
    print(summary(records))
    (args.out / "summary.md").write_text(summary(records), encoding="utf-8")


def summary(records: list[dict]) -> str:
    groups = defaultdict(list)
    for record in records:
        groups[(record["task"], record["config"])].append(record)
    lines = ["| task | configuration | n | accuracy | said not found | reads / question | notes the model pointed to "
             "| seconds / question |", "|---|---|---|---|---|---|---|---|"]
    for (task, config), group in sorted(groups.items()):
        matched = [m for r in group for m in r["matched"]]
        lines.append(f"| {task} | {config} | {len(group)} | {statistics.mean(r['correct'] for r in group):.0%} | "
                     f"{statistics.mean(r['refused'] for r in group):.0%} | "
                     f"{statistics.mean(len(r['reads']) for r in group):.2f} | "
                     f"{f'{sum(matched)}/{len(matched)}' if matched else '-'} | "
                     f"{statistics.mean(r['seconds'] for r in group):.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
