"""One context, many questions: which reading is fastest per question, at what accuracy, on SmolLM2-135M-Instruct.

One context of `--length` tokens holds `--questions` needles (RULER's `niah_multikey` case, whose needles
all become questions: "What is the special magic number for <key> ...?"). Every configuration
compresses it once (`compress()`), then answers every question from the bank twice over (round 1,
then the same questions again: round 2), greedy, notes and answers as long as the model writes them;
each question is put to every configuration in turn, so that changes in the machine's load hit all alike:
- raw reading as in release 0.1 (`ReadingConfig(keep_bits=0)`): the lexical gate passes one block, whose
  chunk is re-read (its bank is token ids, so compressing is tokenizing);
- raw reading keeping the KV of each read (`ReadingConfig(keep_bits=8)`, the default now): a block read
  again in round 2 reads that KV instead of pre-filling its chunk;
- compressed reading (`CompressionConfig("none", bits=b)`): compressing runs the model over the whole
  context once; a read no longer pre-fills the chunk (the paper);
- MemAgent mode (every raw chunk of 2048 tokens, notes rewritten), on the first `--memagent-questions`
  questions only: each costs minutes on a CPU.
Printed per configuration: compression time; per question (median) in each round; accuracy; the tokens
decoded per question (so the times compare like with like); one question over a fresh context, which is
compression plus a round-1 question; and after how many questions compressed reading has paid for its
compression. Run it with `OMP_NUM_THREADS=1` on a shared machine: oversubscribed threads distort times.

    OMP_NUM_THREADS=1 python benchmarks/reused_bank.py --length 32k --questions 10 --out benchmarks/results/reused-bank
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

RAW = "raw reading, nothing kept (release 0.1)"
NEEDLE = re.compile(r"One of the special magic numbers for (\S+) is: (\d+)\.")


def context_and_questions(tokenizer, haystack: str, length: int, questions: int,
                          seed: int) -> tuple[str, list[tuple[str, str]]]:
    """A `niah_multikey` context with `questions` needles, and a (question, answer) pair for each needle."""
    from compressmem.eval.niah import niah_multikey

    case = niah_multikey(tokenizer, haystack, length, seed, 0, distractors=questions - 1)
    return case.context, [(f"What is the special magic number for {key} mentioned in the provided text?", value)
                          for key, value in NEEDLE.findall(case.context)]


def configurations(chunk: int) -> dict:
    from compressmem import ChunkingConfig, CompressionConfig, MemoryConfig, ReadingConfig

    default = MemoryConfig(chunking=ChunkingConfig(chunk))
    compressed = default.replace(reading=ReadingConfig("compressed"), compression=CompressionConfig("none", bits=4))
    return {RAW: default.replace(reading=ReadingConfig(keep_bits=0)),
            "raw reading, keeping 8-bit KV": default.replace(reading=ReadingConfig(keep_bits=8)),
            "compressed reading, 4 bits": compressed,
            "compressed reading, 8 bits": compressed.replace(compression=CompressionConfig("none", bits=8)),
            "MemAgent": MemoryConfig.memagent()}


def ask(model, bank, question: str, gold: str) -> dict:
    prompt = model.prompt_ids(question)
    start = time.perf_counter()
    out = model.generate(prompt, bank=bank, max_new_tokens=32, do_sample=False, return_dict_in_generate=True)
    seconds = time.perf_counter() - start
    answer = model.tokenizer.decode(out.sequences[0, prompt.shape[1]:], skip_special_tokens=True)
    trace = out.trace[0]
    return {"seconds": seconds, "correct": gold in answer, "answer": answer.strip(), "blocks": trace.blocks_read,
            "reused": sum(step.reused for step in trace.steps),
            "decoded": sum(len(step.output_ids) for step in trace.steps) + out.sequences.shape[1] - prompt.shape[1]}


def run(models: dict, context: str, pairs: list[tuple[str, str]], rounds: int) -> dict:
    """Compress `context` for every model, then ask the questions `rounds` times, each question put to every
    model in turn, so that a change in the machine's load hits them alike."""
    banks, runs = {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        banks[name] = model.compress(context)
        runs[name] = {"compress_seconds": time.perf_counter() - start, "rounds": [[] for _ in range(rounds)]}
    for asked in range(rounds):
        for question, gold in pairs:
            for name, model in models.items():
                runs[name]["rounds"][asked].append(ask(model, banks[name], question, gold))
    for name, bank in banks.items():
        runs[name].update(bank_mib=bank.nbytes / 2**20, kept_mib=bank.kept.nbytes / 2**20)
        print(f"{name}: {line(runs[name])}", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", default="32k")
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--memagent-questions", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--haystack", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "pg_essays.json")
    parser.add_argument("--out", type=Path, help="folder for every answer (runs.json) and the table (summary.md)")
    args = parser.parse_args()

    from compressmem import DEFAULT_MODEL, CompressedMemoryModel
    from compressmem.eval import load_haystack, parse_token_counts

    base = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, show_progress=False)
    length = parse_token_counts(args.length)[0]
    context, pairs = context_and_questions(base.tokenizer, load_haystack(args.haystack), length, args.questions,
                                           args.seed)
    models = {name: base.with_config(config, show_progress=False)
              for name, config in configurations(args.chunk_size).items()}
    memagent = {"MemAgent": models.pop("MemAgent")}
    runs = {**run(models, context, pairs, 2), **run(memagent, context, pairs[:args.memagent_questions], 1)}
    text = summary(runs, length, args)
    print("\n" + text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "runs.json").write_text(json.dumps(runs, indent=1), encoding="utf-8")
        (args.out / "summary.md").write_text(text, encoding="utf-8")


def median(asked: list[dict], key: str = "seconds") -> float:
    return statistics.median(a[key] for a in asked)


def line(result: dict) -> str:
    rounds = result["rounds"]
    return (f"compress {result['compress_seconds']:.1f} s; " + "; ".join(
        f"round {i + 1}: {median(asked):.2f} s a question, {sum(a['correct'] for a in asked)}/{len(asked)} correct"
        for i, asked in enumerate(rounds)))


def summary(runs: dict, length: int, args: argparse.Namespace) -> str:
    raw = runs[RAW]
    raw_question = median(raw["rounds"][0])
    rows = ["| reading | compress (s) | per question, round 1 (s) | round 2 (s) | vs 0.1, round 2 | correct (r1, r2) "
            "| tokens decoded a question | reads from kept KV (r2) | one question, fresh context (s) | bank + kept "
            "| pays off after |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in runs.items():
        first = result["rounds"][0]
        last = result["rounds"][-1]
        saved = raw_question - median(first)
        extra = result["compress_seconds"] - raw["compress_seconds"]
        payoff = "-" if not name.startswith("compressed") else (
            f"{max(extra, 0) / saved:.0f} questions" if saved > 0 else "never")
        correct = ", ".join(f"{sum(a['correct'] for a in asked)}/{len(asked)}" for asked in result["rounds"])
        rows.append(f"| {name} | {result['compress_seconds']:.1f} | {median(first):.2f} | "
                    f"{median(last):.2f} | {median(raw['rounds'][-1]) / median(last):.2f}x | {correct} | "
                    f"{median(first, 'decoded'):.0f} | {sum(a['reused'] for a in last)} | "
                    f"{result['compress_seconds'] + median(first):.1f} | "
                    f"{result['bank_mib']:.1f} + {result['kept_mib']:.1f} MiB | {payoff} |")
    return (f"SmolLM2-135M-Instruct, CPU; {length} tokens, {args.questions} questions (MemAgent: the first "
            f"{args.memagent_questions}, one round), chunks of {args.chunk_size}, lexical gate top-1, greedy\n\n"
            + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
