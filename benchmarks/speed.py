"""Side by side in one process: compressmem vs MemAgent mode vs full-context generate, at a sweep of lengths.

Same model, same contexts, same questions. Every memory update decodes exactly `--update-tokens`
tokens and every answer `--answer-tokens` (end-of-sequence ignored), so the modes differ only in
what they read. For each length it prints wall time and peak memory (process RSS on the CPU,
`torch.cuda.max_memory_allocated` on a GPU) with their ratios to MemAgent, then the amortised
case: compress once and ask `--questions` questions, against MemAgent answering the same questions.

    python benchmarks/speed.py --lengths 4k,8k,16k,32k,64k,128k --amortised-length 32k --out benchmarks/results/speed
    python benchmarks/speed.py --shape qwen2.5-7b --device cuda --dtype bfloat16 --chunk-size 4096 \
        --memagent-chunk-size 4096 --read compressed --gate attention --lengths 32k,64k,128k,256k,512k \
        --amortised-length 128k   # and once more without --read/--gate: the default pipeline
        # random weights: timing depends on shapes only

Peak memory is reported twice: the whole process (or all allocated GPU memory), which includes the
model's weights, and the rise above what was in use before the question ("working memory").
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

DEFAULT_HAYSTACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "pg_essays.json"
SHAPES = {  # random-weight models shaped like real ones: speed and memory depend on shapes, not weights
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, rope_theta=1e6),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, rope_theta=1e6),
}


def load(args: argparse.Namespace):
    """compressmem's default pipeline on SmolLM2, or on a random-weight model of a named shape."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from compressmem import DEFAULT_MODEL, CompressedMemoryModel

    config = configuration(args)
    dtype = getattr(torch, args.dtype)
    smollm2 = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, config=config, torch_dtype=dtype,
                                                    show_progress=False)
    if args.shape == "smollm2":
        smollm2.model.to(args.device)
        return smollm2
    shape = Qwen2Config(max_position_embeddings=1 << 20, **SHAPES[args.shape])
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(shape, torch_dtype=dtype).eval()
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = smollm2.tokenizer.eos_token_id
    return CompressedMemoryModel(model, smollm2.tokenizer, memory_config=config, base_name=f"random-{args.shape}",
                                 show_progress=False)


def configuration(args: argparse.Namespace):
    """compressmem's settings from the options: compression (select at `--ratio`) only where the gate or the
    reading needs compressed KV."""
    from compressmem import ChunkingConfig, CompressionConfig, GateConfig, MemoryConfig, NotesConfig, ReadingConfig

    needs_kv = args.gate == "attention" or args.read == "compressed"
    ratio = None if args.compression == "none" else args.ratio
    compression = CompressionConfig(args.compression, ratio, bits=args.bits) if needs_kv else None
    return MemoryConfig(chunking=ChunkingConfig(args.chunk_size), notes=NotesConfig(note_tokens=args.update_tokens),
                        compression=compression, gate=GateConfig(args.gate), reading=ReadingConfig(args.read))


def make_context(tokenizer, haystack: str, length: int, questions: int, seed: int) -> tuple[str, list[tuple]]:
    """A `length`-token essay context with one needle per question; returns it and (question, answer) pairs."""
    from compressmem.eval.haystack import hide_in_haystack

    rng = random.Random(f"speed:{length}:{seed}")
    keys = rng.sample(range(100, 1000), questions)
    values = [str(rng.randrange(1_000_000, 10_000_000)) for _ in keys]
    needles = [f"The access code for vault {key} is {value}." for key, value in zip(keys, values)]
    context, _ = hide_in_haystack(tokenizer, haystack, length, needles, rng)
    return context, [(f"What is the access code for vault {key}?", value) for key, value in zip(keys, values)]


def measure(device: torch.device, run) -> dict:
    from compressmem.eval import PeakMemory

    with PeakMemory(device) as peak:
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
    return {**result, "seconds": seconds, "peak_mib": peak.peak_bytes / 2**20,
            "rise_mib": peak.increase_bytes / 2**20}


def ask(model, question: str, answer_tokens: int, **source) -> dict:
    """One question through the memory pipeline; `source` is context= or bank=. Every read writes exactly its
    note budget (`min_new_tokens`), so both sides decode the same number of tokens per read."""
    prompt = model.prompt_ids(question).to(model.model.device)
    budget = model.memory_config.notes.budget
    out = model.generate(prompt, **source, max_new_tokens=answer_tokens, min_new_tokens=answer_tokens,
                         do_sample=False, return_dict_in_generate=True, notes_kwargs={"min_new_tokens": budget})
    answer = model.tokenizer.decode(out.sequences[0, prompt.shape[1]:], skip_special_tokens=True)
    return {"answer": answer, "reads": len(out.trace[0].blocks_read), "blocks": out.trace[0].num_blocks}


def ask_full(model, prompt: torch.Tensor, answer_tokens: int) -> dict:
    """The base model's plain generate over the whole context."""
    from compressmem.reader import pad_token_id

    with torch.no_grad():
        out = model.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=answer_tokens,
                                   min_new_tokens=answer_tokens, do_sample=False,
                                   pad_token_id=pad_token_id(model.tokenizer))
    return {"answer": model.tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True), "reads": None}


def single_question(models: dict, device, context: str, qa: tuple, args) -> dict[str, dict]:
    from compressmem.eval.runner import full_prompt_ids

    question, gold = qa
    results = {}
    for name, model in models.items():
        if name == "full":
            prompt = full_prompt_ids(model, context, question).to(device)
            window = model.model.config.get_text_config().max_position_embeddings
            if prompt.shape[1] + args.answer_tokens > window:
                results[name] = {"skipped": f"{prompt.shape[1]} tokens exceed the {window}-token window"}
                continue
            result = measure(device, lambda m=model, p=prompt: ask_full(m, p, args.answer_tokens))
        else:
            result = measure(device, lambda m=model: ask(m, question, args.answer_tokens, context=context))
        result["correct"] = gold in result["answer"]
        results[name] = result
    return results


def amortised(models: dict, device, context: str, pairs: list[tuple], args) -> dict[str, dict]:
    """compressmem compresses once and answers every question from the bank; MemAgent re-reads per question."""
    def answer_all(model, **source) -> dict:
        answers = [ask(model, q, args.answer_tokens, **source) for q, _ in pairs]
        return {"correct": sum(g in a["answer"] for a, (_, g) in zip(answers, pairs)),
                "reads": sum(a["reads"] for a in answers)}

    def with_bank():
        return answer_all(models["compressmem"], bank=models["compressmem"].compress(context))

    def memagent():
        return answer_all(models["memagent"], context=context)

    return {"compressmem": measure(device, with_bank), "memagent": measure(device, memagent)}


def print_tables(rows: list[dict], amortised_row: dict | None) -> str:
    lines = ["| length | mode | blocks read | correct | time (s) | time vs MemAgent | speed-up | peak MiB | "
             "peak vs MemAgent | rise MiB | rise vs MemAgent |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = row["modes"]["memagent"]
        for name, result in row["modes"].items():
            if "skipped" in result:
                lines.append(f"| {row['length']} | {name} | skipped: {result['skipped']} |  |  |  |  |  |  |  |  |")
                continue
            reads = "all (one prompt)" if result["reads"] is None else f"{result['reads']} / {base['blocks']}"
            lines.append(
                f"| {row['length']} | {name} | {reads} | {result['correct']} | {result['seconds']:.1f} | "
                f"{result['seconds'] / base['seconds']:.3f}x | {base['seconds'] / result['seconds']:.1f}x | "
                f"{result['peak_mib']:.0f} | {result['peak_mib'] / base['peak_mib']:.2f}x | {result['rise_mib']:.0f} | "
                f"{result['rise_mib'] / max(base['rise_mib'], 1e-9):.2f}x |")
    if amortised_row:
        ours, theirs = amortised_row["compressmem"], amortised_row["memagent"]
        lines += ["", f"Amortised at {amortised_row['length']} tokens, {amortised_row['questions']} questions:", "",
                  "| mode | blocks read (all questions) | correct | time (s) | speed-up | peak MiB | rise MiB |",
                  "|---|---|---|---|---|---|---|"]
        for name, result in (("compressmem (compress once)", ours), ("memagent", theirs)):
            lines.append(f"| {name} | {result['reads']} | {result['correct']} | {result['seconds']:.1f} | "
                         f"{theirs['seconds'] / result['seconds']:.1f}x | {result['peak_mib']:.0f} | "
                         f"{result['rise_mib']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in rows[0]["modes"]:
        points = [(r["length"], r["modes"][name]) for r in rows if "seconds" in r["modes"][name]]
        if points:
            left.plot([p[0] for p in points], [p[1]["seconds"] for p in points], marker="o", label=name)
            right.plot([p[0] for p in points], [p[1]["peak_mib"] for p in points], marker="o", label=name)
    for axis, label in ((left, "seconds per question"), (right, "peak memory (MiB)")):
        axis.set(xscale="log", xlabel="context tokens", ylabel=label)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    from compressmem import MemoryConfig, NotesConfig
    from compressmem.config import MEMAGENT_CHUNK_SIZE
    from compressmem.eval import load_haystack, parse_token_counts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=parse_token_counts, default=parse_token_counts("4k,8k,16k,32k,64k,128k"))
    parser.add_argument("--amortised-length", type=lambda s: parse_token_counts(s)[0], default=32768)
    parser.add_argument("--questions", type=int, default=10, help="questions of the amortised case (0 skips it)")
    parser.add_argument("--shape", choices=["smollm2", *SHAPES], default="smollm2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--chunk-size", type=int, default=512, help="compressmem's chunk size")
    parser.add_argument("--memagent-chunk-size", type=int, default=MEMAGENT_CHUNK_SIZE)
    parser.add_argument("--read", choices=["raw", "compressed"], default="raw", help="compressmem's read mode")
    parser.add_argument("--gate", choices=["lexical", "attention"], default="lexical", help="compressmem's gate")
    parser.add_argument("--compression", choices=["select", "none"], default="select",
                        help="compressmem's compressor, when its gate or reading needs KV")
    parser.add_argument("--ratio", type=float, default=4.0)
    parser.add_argument("--bits", type=int, default=16, choices=[16, 8, 4, 2], help="bits of the stored KV")
    parser.add_argument("--update-tokens", type=int, default=32)
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--haystack", type=Path, default=DEFAULT_HAYSTACK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for speed.json, speed.md and speed.png")
    args = parser.parse_args()

    model = load(args)
    device = model.model.device
    # MemAgent rewrites its memory at each read; its budget is set to the update tokens so that both sides
    # decode the same number of tokens per read.
    memagent = model.with_config(
        MemoryConfig.memagent(args.memagent_chunk_size, notes=NotesConfig("rewrite", max_tokens=args.update_tokens))
    )
    models = {"compressmem": model, "memagent": memagent, "full": model}
    haystack = load_haystack(args.haystack)
    warm_context, warm_pairs = make_context(model.tokenizer, haystack, 2 * args.memagent_chunk_size, 1, args.seed + 1)
    single_question(models, device, warm_context, warm_pairs[0], args)  # allocator and kernels warm
    rows = []
    for length in args.lengths:
        context, pairs = make_context(model.tokenizer, haystack, length, 1, args.seed)
        rows.append({"length": length, "modes": single_question(models, device, context, pairs[0], args)})
        print(json.dumps(rows[-1]), flush=True)
    amortised_row = None
    if args.questions:
        context, pairs = make_context(model.tokenizer, haystack, args.amortised_length, args.questions, args.seed)
        amortised_row = {"length": args.amortised_length, "questions": args.questions,
                         **amortised(models, device, context, pairs, args)}
        print(json.dumps(amortised_row), flush=True)
    machine = f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}"
    header = (f"{args.shape} ({args.dtype}) on {machine}; {args.gate} gate, {args.read} read, chunk {args.chunk_size} "
              f"(MemAgent: {args.memagent_chunk_size}), {args.compression} ratio {args.ratio}, {args.bits} bits, "
              f"{args.update_tokens} tokens per update, {args.answer_tokens} per answer")
    table = header + "\n\n" + print_tables(rows, amortised_row)
    print("\n" + table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "speed.json").write_text(json.dumps({"rows": rows, "amortised": amortised_row}, indent=1))
        (args.out / "speed.md").write_text(table + "\n")
        plot(rows, args.out / "speed.png")


if __name__ == "__main__":
    main()
