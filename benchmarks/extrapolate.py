"""Stream a multi-million-token context through compression into a bank on disk: memory flat, time linear.

A tiny random Llama (the cost of the pipeline around the model is what is measured; a real model
only multiplies the time per token) compresses a text file of `--tokens` tokens (the essay
haystack repeated, one needle sentence in the middle) with `compress_stream`, keeping the
attention gate's keys. After each million tokens it prints the process RSS and the time so far.
Then the default pipeline (lexical gate) answers a question about the needle from the bank on
disk: the table gives whether the gate read the needle's block, and the time and peak RSS of
indexing the bank and answering.

    python benchmarks/extrapolate.py --tokens 1.75m,10m
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_HAYSTACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "pg_essays.json"


def tiny_model(tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    return AutoModelForCausalLM.from_config(config).eval()


NEEDLE = " The vault code for Quillmoor harbour is 7341962. "
QUESTION = "What is the vault code for Quillmoor harbour?"


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


def answer_from_disk(model, bank, needle_at: int) -> dict:
    """Index the bank on disk and answer the needle question with the lexical gate; did it read the needle?"""
    from compressmem.eval import PeakMemory

    needle_block = next(i for i, (_, _, span, _) in enumerate(bank.blocks.spans) if span[1] > needle_at)
    with PeakMemory() as peak:
        start = time.perf_counter()
        out = model.generate(model.prompt_ids(QUESTION), memory=bank, max_new_tokens=4, do_sample=False,
                             return_dict_in_generate=True)
        seconds = time.perf_counter() - start
    return {"found": needle_block in out.trace[0].blocks_read, "seconds": seconds,
            "peak_mib": peak.peak_bytes / 2**20, "rise_mib": peak.increase_bytes / 2**20}


def checkpoints(pieces, chars_per_token: float, log: list, start: float):
    """Pass pieces through, noting RSS and time each time another million tokens has gone by."""
    from compressmem.eval.measure import process_rss

    chars, next_mark = 0, 1_000_000
    for piece in pieces:
        yield piece
        chars += len(piece)
        tokens = chars / chars_per_token
        while tokens >= next_mark:
            log.append((next_mark, process_rss() / 2**20, time.perf_counter() - start))
            print(f"  ~{next_mark / 1e6:.0f}M tokens: RSS {log[-1][1]:.0f} MiB, {log[-1][2]:.1f} s", flush=True)
            next_mark += 1_000_000


def main() -> None:
    from transformers import AutoTokenizer

    from compressmem import CompressedMemoryModel, MemoryConfig, text_pieces
    from compressmem.cli import _token_counts
    from compressmem.embedded import embedded_model_folder
    from compressmem.eval import load_haystack
    from compressmem.eval.measure import process_rss

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=_token_counts, default=_token_counts("1.75m,10m"))
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--haystack", type=Path, default=DEFAULT_HAYSTACK)
    parser.add_argument("--folder", type=Path, help="where the text and banks go (default: a temporary folder)")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_folder())
    config = MemoryConfig(chunk_size=args.chunk_size, gate="attention", gate_layers=(1, 2))  # gate keys on disk
    model = CompressedMemoryModel(tiny_model(tokenizer), tokenizer, config, base_name="tiny-llama",
                                  show_progress=False)
    reader = model.with_config(MemoryConfig(chunk_size=args.chunk_size, note_tokens=8))  # the default, lexical gate
    haystack = load_haystack(args.haystack)
    sample = haystack[:200_000]
    chars_per_token = len(sample) / len(tokenizer(sample, add_special_tokens=False)["input_ids"])
    with tempfile.TemporaryDirectory(dir=args.folder) as scratch:
        rows = []
        for tokens in args.tokens:
            text, needle_at = write_text(haystack, int(tokens * chars_per_token), Path(scratch))
            print(f"{tokens / 1e6:.2f}M tokens ({text.stat().st_size / 2**20:.0f} MiB of text), "
                  f"RSS before {process_rss() / 2**20:.0f} MiB", flush=True)
            log: list = []
            start = time.perf_counter()
            bank = model.compress_stream(checkpoints(text_pieces(text), chars_per_token, log, start),
                                         Path(scratch) / f"bank-{tokens}")
            seconds = time.perf_counter() - start
            disk = sum(f.stat().st_size for f in (Path(scratch) / f"bank-{tokens}").iterdir())
            answered = answer_from_disk(reader, bank, needle_at)
            print(f"  answered from disk: {answered}", flush=True)
            rows.append((tokens, len(bank), seconds, disk, log, answered))
            text.unlink()
        print("\n| tokens | blocks | compress s | s per M tokens | RSS at 1M (MiB) | RSS at last M | growth "
              "| bank on disk | gate read the needle | index + answer s | peak RSS answering |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for tokens, blocks, seconds, disk, log, answered in rows:
            log = log or [(tokens, float("nan"), seconds)]
            print(f"| {tokens / 1e6:.2f}M | {blocks} | {seconds:.0f} | {seconds / tokens * 1e6:.1f} | "
                  f"{log[0][1]:.0f} | {log[-1][1]:.0f} | {log[-1][1] - log[0][1]:+.0f} MiB | {disk / 2**20:.0f} MiB | "
                  f"{answered['found']} | {answered['seconds']:.0f} | {answered['peak_mib']:.0f} MiB |")
        for tokens, _, _, _, log, _ in rows:
            stretches = [f"{(b[2] - a[2]):.1f}" for a, b in zip(log, log[1:])] or ["(under two million marks)"]
            print(f"{tokens / 1e6:.2f}M: seconds per million tokens, stretch by stretch: {', '.join(stretches)}")


if __name__ == "__main__":
    main()
