"""Side by side on SmolLM2-135M-Instruct: compressmem's default vs MemAgent mode on seeded NIAH cases.

Each (mode, length) runs in its own process so peak RSS is that mode's alone; the table prints
accuracy, blocks read, needle-block recall, wall time and peak RSS with their ratios to MemAgent,
and compression throughput as a fraction of plain prefill throughput.

    python benchmarks/niah_compare.py --lengths 4096,16384 --cases 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HAYSTACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "pg_essays.json"
MODES = {
    "default": {},
    "memagent": "memagent",
    "attention": {"gate": "attention", "compressor": "select", "ratio": 4, "score": "keynorm"},
}


def config_for(mode: str, chunk_size: int):
    from compressmem import MemoryConfig

    settings = MODES[mode]
    if settings == "memagent":
        return MemoryConfig.memagent(chunk_size=chunk_size)
    return MemoryConfig(chunk_size=chunk_size, **settings)


def worker(mode: str, length: int, cases: int, chunk_size: int) -> dict:
    from compressmem import DEFAULT_MODEL, CompressedMemoryModel
    from compressmem.eval import load_haystack, make_niah_case, substring_match

    model = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, config=config_for(mode, chunk_size),
                                                  show_progress=False)
    tok = model.tokenizer
    haystack = load_haystack(HAYSTACK)
    score = reads = recall = 0
    compress_time = answer_time = 0.0
    compressed_tokens = 0
    for seed in range(cases):
        case = make_niah_case(tok, haystack, length, seed)
        needle_block = len(tok(case.context[:case.needle_span[0]], add_special_tokens=False)["input_ids"]) // chunk_size
        inputs = tok.apply_chat_template([{"role": "user", "content": case.question}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        start = time.perf_counter()
        bank = model.compress(case.context)
        compress_time += time.perf_counter() - start
        compressed_tokens += bank.num_tokens
        out = model.generate(**inputs, memory=bank, max_new_tokens=32, do_sample=False, return_dict_in_generate=True)
        answer_time += time.perf_counter() - start
        answer = tok.decode(out.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        trace = out.trace[0]
        score += substring_match(answer, case.answers)
        reads += len(trace.blocks_read)
        recall += needle_block in trace.blocks_read
    prefill_tokens, prefill_time = _prefill_throughput(model, tok, haystack, chunk_size)
    return {"mode": mode, "length": length, "cases": cases, "accuracy": score / cases, "reads": reads / cases,
            "needle_recall": recall / cases, "seconds": answer_time, "compress_tok_s": compressed_tokens / compress_time,
            "prefill_tok_s": prefill_tokens / prefill_time,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _prefill_throughput(model, tok, haystack: str, chunk_size: int) -> tuple[int, float]:
    """Plain prefill of the same model over `chunk_size`-token chunks, batched like compression."""
    import torch

    ids = tok(haystack[:40 * chunk_size], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    batch = ids[: 4 * chunk_size].view(4, chunk_size)
    with torch.no_grad():
        start = time.perf_counter()
        model.model(input_ids=batch, logits_to_keep=1)
        return batch.numel(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--modes", default="default,memagent")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.cases, args.chunk_size)))
        return
    rows = []
    for length in map(int, args.lengths.split(",")):
        for mode in args.modes.split(","):
            command = [sys.executable, __file__, "--worker", mode, str(length), "--cases", str(args.cases),
                       "--chunk-size", str(args.chunk_size)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| length | mode | accuracy | blocks read | needle-block recall | time (s) | time vs MemAgent "
          "| peak RSS (MiB) | RSS vs MemAgent | compress / prefill throughput |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["length"] == row["length"] and r["mode"] == "memagent")
        print(f"| {row['length']} | {row['mode']} | {row['accuracy']:.0%} | {row['reads']:.2f} | "
              f"{row['needle_recall']:.0%} | {row['seconds']:.1f} | {row['seconds'] / base['seconds']:.2f}x | "
              f"{row['peak_rss_mib']:.0f} | {row['peak_rss_mib'] / base['peak_rss_mib']:.2f}x | "
              f"{row['compress_tok_s'] / row['prefill_tok_s']:.2f} |")


if __name__ == "__main__":
    main()
