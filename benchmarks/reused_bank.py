"""A bank reused for many questions: raw reading against compressed reading, on SmolLM2-135M-Instruct.

One context of `--length` tokens holds `--questions` needles (a vault code each); every configuration
compresses it once and answers every question from the bank, with the lexical gate (top-1). Raw
reading re-reads the passed chunk's tokens at each question (its bank is token ids: compressing is
tokenizing); compressed reading reads the block's KV (every entry, quantized), so a read no longer
pre-fills the chunk, but compressing runs the model over the whole context once. Every read writes
exactly `--note-tokens` tokens and every answer `--answer-tokens`, so the configurations decode the
same number of tokens. Printed: compression time, time per question (median), accuracy, and after how
many questions compressed reading has paid for its compression.

    python benchmarks/reused_bank.py --length 32k --questions 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

DEFAULT_HAYSTACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "pg_essays.json"


def configurations(chunk: int, note_tokens: int) -> dict:
    from compressmem import ChunkingConfig, CompressionConfig, MemoryConfig, NotesConfig, ReadingConfig

    notes = NotesConfig(note_tokens=note_tokens)
    compressed = MemoryConfig(chunking=ChunkingConfig(chunk), notes=notes, reading=ReadingConfig("compressed"),
                              compression=CompressionConfig("none", bits=4))
    return {"raw reading (the default)": MemoryConfig(chunking=ChunkingConfig(chunk), notes=notes),
            "compressed reading, 4 bits": compressed,
            "compressed reading, 8 bits": compressed.replace(compression=CompressionConfig("none", bits=8))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", default="32k")
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--note-tokens", type=int, default=32)
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--haystack", type=Path, default=DEFAULT_HAYSTACK)
    args = parser.parse_args()

    from speed import make_context

    from compressmem import DEFAULT_MODEL, CompressedMemoryModel
    from compressmem.eval import load_haystack, parse_token_counts

    base = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, show_progress=False)
    length = parse_token_counts(args.length)[0]
    context, pairs = make_context(base.tokenizer, load_haystack(args.haystack), length, args.questions, args.seed)
    rows = []
    for name, config in configurations(args.chunk_size, args.note_tokens).items():
        model = base.with_config(config, show_progress=False)
        start = time.perf_counter()
        bank = model.compress(context)
        compress_seconds = time.perf_counter() - start
        seconds, correct = [], 0
        for question, gold in pairs:
            prompt = model.prompt_ids(question)
            start = time.perf_counter()
            out = model.generate(prompt, bank=bank, max_new_tokens=args.answer_tokens,
                                 min_new_tokens=args.answer_tokens, do_sample=False,
                                 notes_kwargs={"min_new_tokens": args.note_tokens})
            seconds.append(time.perf_counter() - start)
            correct += gold in model.tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
        rows.append((name, compress_seconds, statistics.median(seconds), correct, bank.nbytes))
        print(f"{name}: compress {compress_seconds:.1f} s, {statistics.median(seconds):.2f} s a question, "
              f"{correct}/{len(pairs)} correct, bank {bank.nbytes / 2**20:.1f} MiB", flush=True)
    raw = rows[0]
    print(f"\nSmolLM2-135M-Instruct, CPU; {length} tokens, {len(pairs)} questions, chunks of {args.chunk_size}, "
          f"lexical gate top-1; {args.note_tokens} tokens a read, {args.answer_tokens} an answer\n")
    print("| reading | compress (s) | per question (s) | vs raw | correct | bank | pays off after |")
    print("|---|---|---|---|---|---|---|")
    for name, compress, per_question, correct, size in rows:
        saved = raw[2] - per_question
        payoff = "-" if name == raw[0] else (f"{(compress - raw[1]) / saved:.0f} questions" if saved > 0 else "never")
        print(f"| {name} | {compress:.1f} | {per_question:.2f} | {raw[2] / per_question:.2f}x | {correct}/{len(pairs)} "
              f"| {size / 2**20:.1f} MiB | {payoff} |")


if __name__ == "__main__":
    main()
