"""Stream a multi-million-token context into a bank on disk, then ask it questions: memory flat, time linear,
question latency flat.

A tiny random Llama (the cost of the pipeline around the model is what is measured; a real model
only multiplies the time per token) compresses a text file of `--tokens` tokens (the essay haystack
repeated, one needle sentence in the middle) with `compress_stream` and the default settings
(lexical gate, raw reading: the bank holds token ids, and the gate's BM25 index is built once and
kept in the bank folder). After each million tokens it prints the process RSS and the time so far.
Then it asks the needle question: six times in the same process (the bank as `compress_stream`
returned it; the first, and the median of the other five), and in a new process that opens the
folder with `MemoryBank.load` (nothing rebuilt; three new processes, the median shown). The table
gives whether the gate read the needle's block and each question's latency.

    python benchmarks/extrapolate.py --tokens 200k,1.75m,10m

With `--rss`, it measures memory instead: for each length, a new process streams the text with
`compress_stream(text_pieces(path))` (the default 1 MiB pieces, the real SmolLM2 tokenizer, the tiny
model) and records its RSS above the start (the RSS once the model is loaded and the text written) at
every million tokens, at the end, and at its peak (the kernel's high-water mark, reset at the start);
then, for `--in-memory` lengths, the same for `compress(text)` with the whole text in memory. `--out`
writes the results as JSON.

    python benchmarks/extrapolate.py --rss 1m,4m,10m --in-memory 1m --out rss.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_HAYSTACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "pg_essays.json"
NEEDLE = " The vault code for Quillmoor harbour is 7341962. "
QUESTION = "What is the vault code for Quillmoor harbour?"
NOTE_TOKENS = 8


def tiny_model(tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    return AutoModelForCausalLM.from_config(config).eval()


def reader(chunk_size: int):
    """The default configuration (lexical gate, raw reading), with short notes, on the tiny model."""
    from transformers import AutoTokenizer

    from compressmem import ChunkingConfig, CompressedMemoryModel, MemoryConfig, NotesConfig
    from compressmem.embedded import embedded_model_folder

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_folder())
    config = MemoryConfig(chunking=ChunkingConfig(chunk_size), notes=NotesConfig(note_tokens=NOTE_TOKENS))
    return CompressedMemoryModel(tiny_model(tokenizer), tokenizer, memory_config=config, base_name="tiny-llama",
                                 show_progress=False)


def write_text(haystack: str, chars: int, folder: Path) -> tuple[Path, int]:
    """The haystack repeated to `chars` characters with the needle half-way; returns the file and its offset."""
    path = folder / "context.txt"
    needle_at = None
    with open(path, "w", encoding="utf-8") as handle:
        written = 0
        while written < chars:
            part = haystack[: min(len(haystack), chars - written)] + " "
            if needle_at is None and written + len(part) >= chars // 2:
                needle_at = written + len(part)
                part += NEEDLE
            handle.write(part)
            written += len(part)
    return path, needle_at


def ask(model, bank, needle_at: int) -> dict:
    """Answer the needle question from `bank`: did the gate read the needle's block, how long did it take?"""
    from compressmem.eval import PeakMemory

    needle_block = next(i for i, info in enumerate(bank.infos) if info.char_span[1] > needle_at)
    with PeakMemory() as peak:
        start = time.perf_counter()
        out = model.generate(model.prompt_ids(QUESTION), bank=bank, max_new_tokens=4, do_sample=False,
                             return_dict_in_generate=True)
        seconds = time.perf_counter() - start
    return {"found": needle_block in out.trace[0].blocks_read, "seconds": seconds, "peak_mib": peak.peak_bytes / 2**20}


def ask_in_new_process(folder: Path, needle_at: int, chunk_size: int, runs: int = 3) -> dict:
    """Open the bank folder in a fresh interpreter and ask once, `runs` times: the run of median total time (open
    and question, timed in the new process)."""
    script = [sys.executable, __file__, "--ask", str(folder), "--needle-at", str(needle_at), "--chunk-size",
              str(chunk_size)]
    results = [json.loads(subprocess.run(script, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
               for _ in range(runs)]
    return sorted(results, key=lambda r: r["open_seconds"] + r["seconds"])[runs // 2]


def answer_from_folder(folder: Path, needle_at: int, chunk_size: int) -> None:
    """`--ask`: the new process's side of `ask_in_new_process`."""
    from compressmem import MemoryBank

    model = reader(chunk_size)
    start = time.perf_counter()
    bank = MemoryBank.load(folder)
    opened = time.perf_counter() - start
    answered = ask(model, bank, needle_at)
    print(json.dumps({"open_seconds": opened, **answered}))


def checkpoints(pieces, chars_per_token: float, log: list, start: float, base_mib: float | None = None):
    """Pass pieces through, noting RSS and time each time another million tokens has gone by (and printing the
    RSS above `base_mib` when given)."""
    from compressmem.eval.measure import process_rss

    chars, next_mark = 0, 1_000_000
    for piece in pieces:
        yield piece
        chars += len(piece)
        tokens = chars / chars_per_token
        while tokens >= next_mark:
            log.append((next_mark, process_rss() / 2**20, time.perf_counter() - start))
            above = f" (+{log[-1][1] - base_mib:.0f} above the start)" if base_mib is not None else ""
            print(f"  ~{next_mark / 1e6:.0f}M tokens: RSS {log[-1][1]:.0f} MiB{above}, {log[-1][2]:.1f} s", flush=True)
            next_mark += 1_000_000


def chars_per_token_of(model, haystack: str) -> float:
    """Characters per token of the haystack, from its first 200K characters."""
    sample = haystack[:200_000]
    return len(sample) / len(model.tokenizer(sample, add_special_tokens=False)["input_ids"])


class PeakRSS:
    """`with PeakRSS() as peak: ...`, then `peak.start` and `peak.peak` (bytes): the RSS on entry and its highest
    value inside. Linux: the kernel's high-water mark (VmHWM), reset on entry; elsewhere the sampled RSS."""

    def __enter__(self) -> "PeakRSS":
        from compressmem.eval import PeakMemory
        from compressmem.eval.measure import process_rss

        self.source, self._sampler = "VmHWM", None
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            self.source, self._sampler = "sampled", PeakMemory()
            self._sampler.__enter__()
        self.start = process_rss()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._sampler is not None:
            self._sampler.__exit__(*exc_info)
            self.peak = self._sampler.peak_bytes
            return
        with open("/proc/self/status", encoding="ascii") as handle:
            self.peak = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))


def measure_rss(kind: str, tokens: int, chunk_size: int, haystack_path: Path, scratch: Path) -> dict:
    """`--rss-run`: the RSS of compressing `tokens` tokens of essays in this (new) process, `kind` "stream"
    (`compress_stream(text_pieces(path))`, default pieces) or "memory" (`compress(text)`), in MiB above the start."""
    from compressmem import text_pieces
    from compressmem.eval import load_haystack
    from compressmem.eval.measure import process_rss

    model = reader(chunk_size)
    haystack = load_haystack(haystack_path)
    chars_per_token = chars_per_token_of(model, haystack)
    text, _ = write_text(haystack, int(tokens * chars_per_token), scratch)
    log: list = []
    with PeakRSS() as peak:
        base = peak.start / 2**20
        print(f"{kind}: {tokens / 1e6:.2f}M tokens ({text.stat().st_size / 2**20:.0f} MiB of text), RSS at the "
              f"start {base:.0f} MiB", flush=True)
        start = time.perf_counter()
        if kind == "stream":
            bank = model.compress_stream(checkpoints(text_pieces(text), chars_per_token, log, start, base),
                                         scratch / "bank")
        else:
            bank = model.compress(text.read_text(encoding="utf-8"), bank_device="cpu")
        seconds = time.perf_counter() - start
        end = process_rss() / 2**20
    result = {"kind": kind, "tokens": bank.num_tokens, "text_mib": text.stat().st_size / 2**20, "seconds": seconds,
              "start_mib": base, "end_above_start_mib": end - base, "peak_above_start_mib": peak.peak / 2**20 - base,
              "peak_mib": peak.peak / 2**20, "peak_source": peak.source,
              "marks": [{"tokens": mark, "above_start_mib": rss - base, "seconds": at} for mark, rss, at in log]}
    print(f"  end: +{result['end_above_start_mib']:.0f} MiB above the start, peak +"
          f"{result['peak_above_start_mib']:.0f} ({result['peak_mib']:.0f} MiB), {seconds:.1f} s", flush=True)
    return result


def rss_table(args: argparse.Namespace) -> None:
    """`--rss`: each length streamed (then each `--in-memory` length compressed in memory) in a new process."""
    import compressmem
    from compressmem import chunking

    runs = []
    with tempfile.TemporaryDirectory(dir=args.folder) as scratch:
        jobs = [("stream", n) for n in args.rss] + [("memory", n) for n in args.in_memory if n > 0]
        for kind, tokens in jobs:
            folder = Path(scratch) / f"{kind}-{tokens}"
            folder.mkdir()
            script = [sys.executable, __file__, "--rss-run", kind, "--tokens", str(tokens), "--chunk-size",
                      str(args.chunk_size), "--haystack", str(args.haystack), "--folder", str(folder)]
            done = subprocess.run(script, capture_output=True, text=True)
            lines = done.stdout.splitlines()
            print("\n".join(lines[:-1]), flush=True)
            if done.returncode:
                raise RuntimeError(f"{' '.join(script)} failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(lines[-1]))
    print("\n| compress | tokens | s | RSS +MiB at 1M | at the last M | at the end | peak +MiB | peak MiB per M "
          "tokens | growth MiB per M tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        marks = run["marks"]
        millions = run["tokens"] / 1e6
        first = f"{marks[0]['above_start_mib']:.0f}" if marks else "-"
        last = f"{marks[-1]['above_start_mib']:.0f}" if marks else "-"
        growth = "-"
        if len(marks) > 1:
            growth = (marks[-1]["above_start_mib"] - marks[0]["above_start_mib"]) / (
                (marks[-1]["tokens"] - marks[0]["tokens"]) / 1e6)
            growth = f"{growth:+.1f}"
        run["peak_mib_per_million_tokens"] = run["peak_above_start_mib"] / millions
        kind = "compress_stream, 1 MiB pieces" if run["kind"] == "stream" else "compress, whole text"
        print(f"| {kind} | {millions:.2f}M | {run['seconds']:.0f} | {first} | {last} | "
              f"{run['end_above_start_mib']:.0f} | {run['peak_above_start_mib']:.0f} | "
              f"{run['peak_mib_per_million_tokens']:.1f} | {growth} |")
    if args.out:
        record = {"command": " ".join(["python", *sys.argv]), "tokenizer": "SmolLM2-135M-Instruct",
                  "model": "tiny random Llama (4 layers, hidden 64)", "chunk_size": args.chunk_size,
                  "piece_chars": 1 << 20, "tokenize_chars": getattr(chunking, "TOKENIZE_CHARS", None),
                  "compressmem": compressmem.__version__, "python": platform.python_version(),
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "runs": runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"written to {args.out}")


def main() -> None:
    from compressmem import text_pieces
    from compressmem.eval import load_haystack, parse_token_counts
    from compressmem.eval.measure import process_rss

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=parse_token_counts, default=parse_token_counts("200k,1.75m,10m"),
                        help="context lengths, e.g. 200k,1.75m,10m (k = 1024, m = 1024**2)")
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--haystack", type=Path, default=DEFAULT_HAYSTACK)
    parser.add_argument("--folder", type=Path, help="where the text and banks go (default: a temporary folder)")
    parser.add_argument("--rss", type=parse_token_counts,
                        help="measure memory instead: stream each of these lengths in a new process, e.g. 1m,4m,10m")
    parser.add_argument("--in-memory", type=parse_token_counts, default=parse_token_counts("1m"),
                        help="with --rss, also compress these lengths in memory with compress() (0: none)")
    parser.add_argument("--out", type=Path, help="with --rss, write the results as JSON here")
    parser.add_argument("--ask", type=Path, help=argparse.SUPPRESS)  # the new process of ask_in_new_process
    parser.add_argument("--needle-at", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rss-run", choices=("stream", "memory"), help=argparse.SUPPRESS)  # a process of --rss
    args = parser.parse_args()
    if args.ask:
        answer_from_folder(args.ask, args.needle_at, args.chunk_size)
        return
    if args.rss_run:
        result = measure_rss(args.rss_run, args.tokens[0], args.chunk_size, args.haystack, args.folder)
        print(json.dumps(result))
        return
    if args.rss:
        rss_table(args)
        return

    model = reader(args.chunk_size)
    haystack = load_haystack(args.haystack)
    chars_per_token = chars_per_token_of(model, haystack)
    with tempfile.TemporaryDirectory(dir=args.folder) as scratch:
        rows = []
        for tokens in args.tokens:
            text, needle_at = write_text(haystack, int(tokens * chars_per_token), Path(scratch))
            print(f"{tokens / 1e6:.2f}M tokens ({text.stat().st_size / 2**20:.0f} MiB of text), "
                  f"RSS before {process_rss() / 2**20:.0f} MiB", flush=True)
            log: list = []
            start = time.perf_counter()
            folder = Path(scratch) / f"bank-{tokens}"
            bank = model.compress_stream(checkpoints(text_pieces(text), chars_per_token, log, start), folder)
            seconds = time.perf_counter() - start
            disk = sum(f.stat().st_size for f in folder.iterdir())
            questions = [ask(model, bank, needle_at) for _ in range(6)]
            fresh = ask_in_new_process(folder, needle_at, args.chunk_size)
            print(f"  same process: {questions}; new process: {fresh}", flush=True)
            questions = [questions[0], sorted(questions[1:], key=lambda q: q["seconds"])[2]]  # first, median of 5
            rows.append((bank.num_tokens, len(bank), seconds, disk, log, questions, fresh))
            text.unlink()
        print("\n| tokens | blocks | compress s | s per M tokens | RSS at 1M (MiB) | RSS at last M | bank on disk | "
              "gate read the needle | first question (s) | later questions, median (s) | new process: open + question "
              "(s) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for tokens, blocks, seconds, disk, log, questions, fresh in rows:
            log = log or [(tokens, float("nan"), seconds)]
            found = all(q["found"] for q in questions) and fresh["found"]
            print(f"| {tokens / 1e6:.2f}M | {blocks} | {seconds:.0f} | {seconds / tokens * 1e6:.1f} | "
                  f"{log[0][1]:.0f} | {log[-1][1]:.0f} | {disk / 2**20:.0f} MiB | {'yes' if found else 'NO'} | "
                  f"{questions[0]['seconds']:.3f} | {questions[1]['seconds']:.3f} | "
                  f"{fresh['open_seconds']:.3f} + {fresh['seconds']:.3f} |")
        base = rows[0]
        base_question = base[5][1]["seconds"]
        base_fresh = base[6]["open_seconds"] + base[6]["seconds"]
        for tokens, _, _, _, _, questions, fresh in rows[1:]:
            latency = questions[1]["seconds"] / base_question
            new_process = (fresh["open_seconds"] + fresh["seconds"]) / base_fresh
            print(f"{tokens / 1e6:.2f}M vs {base[0] / 1e6:.2f}M: question latency x{latency:.2f}, "
                  f"new process (open + question) x{new_process:.2f}")

if __name__ == "__main__":
    main()
