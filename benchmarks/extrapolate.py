"""Stream a multi-million-token context through compression into a bank on disk: memory flat, time linear.

A tiny random Llama (the cost of the pipeline around the model is what is measured; a real model
only multiplies the time per token) compresses a text file of `--tokens` tokens (the essay
haystack repeated) with `compress_stream`. After each million tokens it prints the process RSS and
the time so far; the table at the end gives the RSS growth from the first million to the last and
the seconds per million tokens of each stretch.

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


def write_text(haystack: str, chars: int, folder: Path) -> Path:
    """The haystack repeated to `chars` characters, written to a file in 1 MB steps."""
    path = folder / "context.txt"
    with open(path, "w", encoding="utf-8") as handle:
        written = 0
        while written < chars:
            part = haystack[: min(len(haystack), chars - written)]
            handle.write(part + " ")
            written += len(part) + 1
    return path


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
    from compressmem import CompressedMemoryModel, MemoryConfig, text_pieces
    from compressmem.cli import _token_counts
    from compressmem.embedded import embedded_model_folder
    from compressmem.eval import load_haystack
    from compressmem.eval.measure import process_rss
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=_token_counts, default=_token_counts("1.75m,10m"))
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--haystack", type=Path, default=DEFAULT_HAYSTACK)
    parser.add_argument("--folder", type=Path, help="where the text and banks go (default: a temporary folder)")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_folder())
    config = MemoryConfig(chunk_size=args.chunk_size, gate="attention", gate_layers=(1, 2))  # gate keys on disk
    model = CompressedMemoryModel(tiny_model(tokenizer), tokenizer, config, base_name="tiny-llama",
                                  show_progress=False)
    haystack = load_haystack(args.haystack)
    sample = haystack[:200_000]
    chars_per_token = len(sample) / len(tokenizer(sample, add_special_tokens=False)["input_ids"])
    with tempfile.TemporaryDirectory(dir=args.folder) as scratch:
        rows = []
        for tokens in args.tokens:
            text = write_text(haystack, int(tokens * chars_per_token), Path(scratch))
            print(f"{tokens / 1e6:.2f}M tokens ({text.stat().st_size / 2**20:.0f} MiB of text), "
                  f"RSS before {process_rss() / 2**20:.0f} MiB", flush=True)
            log: list = []
            start = time.perf_counter()
            bank = model.compress_stream(checkpoints(text_pieces(text), chars_per_token, log, start),
                                         Path(scratch) / f"bank-{tokens}")
            seconds = time.perf_counter() - start
            disk = sum(f.stat().st_size for f in (Path(scratch) / f"bank-{tokens}").iterdir())
            rows.append((tokens, len(bank), seconds, disk, log))
            text.unlink()
        print("\n| tokens | blocks | seconds | s per M tokens | RSS at 1M (MiB) | RSS at last M | growth "
              "| bank on disk |")
        print("|---|---|---|---|---|---|---|---|")
        for tokens, blocks, seconds, disk, log in rows:
            print(f"| {tokens / 1e6:.2f}M | {blocks} | {seconds:.0f} | {seconds / tokens * 1e6:.1f} | "
                  f"{log[0][1]:.0f} | {log[-1][1]:.0f} | {log[-1][1] - log[0][1]:+.0f} MiB | {disk / 2**20:.0f} MiB |")
        for tokens, _, _, _, log in rows:
            stretches = [f"{(b[2] - a[2]):.1f}" for a, b in zip(log, log[1:])]
            print(f"{tokens / 1e6:.2f}M: seconds per million tokens, stretch by stretch: {', '.join(stretches)}")


if __name__ == "__main__":
    main()
