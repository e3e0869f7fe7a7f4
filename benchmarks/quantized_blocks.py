"""Does a compressed block still carry a 7-digit needle? Selection ratio x bits, on SmolLM2-135M-Instruct.

For each seeded `niah_single` case at each length, the chunk that holds the needle (the block a perfect
gate passes) is compressed with every configuration of the grid and read by the reasoner as its
compressed block (`ReadingConfig("compressed")`, notes appended, greedy), then the answer is scored.
The first row reads the same chunk raw (its tokens re-read), the reference each block is held to.
The block's bytes per chunk token are set against the chunk's KV in bfloat16 (2 bytes a value, keys
and values at every layer), scales, zero points and positions included.

    python benchmarks/quantized_blocks.py --lengths 4k,32k --n 20 --out benchmarks/results/quantized-blocks
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

GRID = [("none", None), ("select", 2.0), ("select", 4.0), ("learned", 4.0)]
BITS = (16, 8, 4, 2)


def configurations(methods: list[str], bits: list[int], group: int):
    """(name, MemoryConfig) for every method x bits; the learned compressor's chunk size is its checkpoint's."""
    from compressmem import ChunkingConfig, CompressionConfig, MemoryConfig, NotesConfig, ReadingConfig

    if "raw" in methods:
        yield "raw chunk (re-read)", MemoryConfig(chunking=ChunkingConfig(512), gate=None,
                                                  notes=NotesConfig(note_tokens=48))
    for method, ratio in GRID:
        name = method if ratio is None else f"{method} r{ratio:g}"
        if name not in methods:
            continue
        for b in bits:
            compression = CompressionConfig(method, ratio, bits=b, group=None if b == 16 else group)
            chunk = 256 if method == "learned" else 512
            yield f"{name}, {b} bits", MemoryConfig(chunking=ChunkingConfig(chunk), compression=compression, gate=None,
                                                     reading=ReadingConfig("compressed"),
                                                     notes=NotesConfig(note_tokens=48))


def bf16_bytes_per_token(model) -> float:
    """Bytes a chunk token's KV takes in bfloat16: keys and values, every layer and KV head."""
    text = model.model.config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim


def evidence_chunk(model, case):
    """The chunk of `case.context` that holds the needle, under `model`'s chunking."""
    from compressmem.chunking import split_into_chunks, tokenize_context

    chunks = split_into_chunks(tokenize_context(case.context, model.tokenizer), model.memory_config.chunking.size)
    start, end = case.evidence[0]
    return next(c for c in chunks if c.char_span[0] < end and start < c.char_span[1])


def run_case(model, case) -> dict:
    from compressmem.eval import substring_match

    chunk = evidence_chunk(model, case)
    started = time.perf_counter()
    bank = model.builder.bank([chunk], model.model.device, show_progress=False)
    compress_seconds = time.perf_counter() - started
    prompt = model.prompt_ids(case.question)
    out = model.generate(prompt, bank=bank, max_new_tokens=32, do_sample=False, return_dict_in_generate=True)
    answer = model.tokenizer.decode(out.sequences[0, prompt.shape[1]:], skip_special_tokens=True)
    kv_bytes = bank.nbytes - 4 * chunk.token_ids.numel() - 4 * bank.prefix_ids.numel() - sum(
        t.numel() * t.element_size() for t in (bank.prefix_keys, bank.prefix_values) if t is not None)
    return {"correct": substring_match(answer, case.answers), "answer": answer.strip(),
            "notes": out.trace[0].notes, "bytes_per_token": kv_bytes / chunk.token_ids.numel(),
            "compress_seconds": compress_seconds, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="4k,32k")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="raw,none,select r2,select r4,learned r4")
    parser.add_argument("--bits", default="16,8,4,2")
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from compressmem import DEFAULT_MODEL, CompressedMemoryModel
    from compressmem.checkpoints import SMOLLM2_LEARNED
    from compressmem.eval import make_cases, parse_token_counts

    base = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, checkpoint=SMOLLM2_LEARNED, show_progress=False)
    bf16 = bf16_bytes_per_token(base)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(args.out / "cases.jsonl", "w", encoding="utf-8") as log:
        for length in parse_token_counts(args.lengths):
            cases = make_cases("niah_single", base.tokenizer, length, args.n, args.seed)
            for name, config in configurations(args.methods.split(","), [int(b) for b in args.bits.split(",")],
                                               args.group):
                model = base.with_config(config, show_progress=False)
                results = [run_case(model, case) for case in cases]
                for case, result in zip(cases, results):
                    log.write(json.dumps({"length": length, "config": name, "case_id": case.case_id, **result}) + "\n")
                log.flush()
                per_token = sum(r["bytes_per_token"] for r in results) / len(results)
                rows.append((length, name, int(sum(r["correct"] for r in results)), len(results), per_token,
                             per_token / bf16, sum(r["seconds"] for r in results) / len(results)))
                print(f"{length} {name}: {rows[-1][2]}/{rows[-1][3]}, {per_token:.0f} B/token "
                      f"({per_token / bf16:.3f} of bf16), {rows[-1][6]:.1f} s a case", flush=True)
    table = ["| length | block | needle found | bytes per chunk token | vs bf16 KV | s per case |",
             "|---|---|---|---|---|---|"]
    table += [f"| {length} | {name} | {found}/{n} | {per_token:.0f} | {ratio:.3f} | {seconds:.1f} |"
              for length, name, found, n, per_token, ratio, seconds in rows]
    text = (f"SmolLM2-135M-Instruct, CPU; bf16 KV = {bf16} bytes a chunk token; groups of {args.group}\n\n"
            + "\n".join(table) + "\n")
    (args.out / "summary.md").write_text(text, encoding="utf-8")
    print("\n" + text)


if __name__ == "__main__":
    main()
