"""What the paper's compressor costs inside compressmem, against their release's loop, on the tiny fixture model.

The model is the parity fixture (`tests/fixtures/lycheememory`: a random Qwen2 of 3 layers, 2 KV heads of 16 in
their layout, byte-level tokenizer), loaded with `compressmem.lychee.load_lychee` and run as their recurrent
generate was in the parity run (window 512, ratio 4: one window a chunk). The context is the fixture's three
texts, one after another; the questions are theirs and two more.

Printed, in one run:
- bank bytes per token for 16-, 8- and 4-bit blocks (as stored: KV, positions, token ids; and KV alone), beside
  every KV entry kept (`CompressionConfig("none")`), and the same arithmetic for Qwen2-7B's shapes (computed);
- time per question over a bank compressed once (every block read, as their loop reads every chunk; and with the
  lexical gate passing 2 blocks), against their release's loop reproduced with the same compressor: every chunk
  compressed again for every question (`answer(question, context=text)`), then every chunk read. The reads and
  the notes are the same in both (greedy, same blocks), so the difference is the compression per question.

    OMP_NUM_THREADS=1 python benchmarks/lychee_cost.py --questions 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "lycheememory"
MORE_QUESTIONS = ["Where was Mara Quill born?", "When does the harbour vault open?"]


def fixture_folder(folder: Path) -> Path:
    """The fixture checkpoint and tokenizer in one folder, positions raised to 8192 for compressmem's prompts."""
    for path in [*(FIXTURE / "model").iterdir(), *(FIXTURE / "tokenizer").iterdir()]:
        shutil.copy(path, folder / path.name)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 8192
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def main() -> None:
    from compressmem import (
        ChunkingConfig,
        CompressedMemoryModel,
        CompressionConfig,
        GateConfig,
        MemoryConfig,
        NotesConfig,
        PromptConfig,
        ReadingConfig,
    )
    from compressmem.lychee import load_lychee

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--answer-tokens", type=int, default=12)
    parser.add_argument("--dtype", default="bfloat16", help="the model's dtype: 16-bit blocks are stored in it")
    args = parser.parse_args()

    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    runs = manifest["generate"]["answers"]
    text = "\n\n".join(run["text"] for run in runs)
    questions = ([run["question"] for run in runs] + MORE_QUESTIONS)[: args.questions]
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)

    def config(bits: int = 16, gate: GateConfig | None = None, method: str = "learned") -> MemoryConfig:
        return MemoryConfig(
            chunking=ChunkingConfig(args.window),
            compression=CompressionConfig(method, ratio=args.ratio if method == "learned" else None, bits=bits),
            gate=gate,
            reading=ReadingConfig("compressed", until="all"),
            notes=NotesConfig(note_tokens=12),
            prompts=PromptConfig(not_found=None),
        )

    with tempfile.TemporaryDirectory() as tmp:
        folder = fixture_folder(Path(tmp))
        model = load_lychee(folder, memory_config=config(), window=args.window, show_progress=False, dtype=dtype)
        tokens = len(model.tokenizer(text)["input_ids"])
        print("# LycheeMemory's compressor in compressmem: cost on the tiny fixture model\n")
        print(
            "- model: tests/fixtures/lycheememory (random Qwen2, 3 layers, 2 KV heads x 16, "
            f"{args.dtype}), CPU, 1 thread"
        )
        print(f"- context: the fixture's 3 texts, {tokens} tokens; window and chunk {args.window}, ratio {args.ratio}")
        print(f"- torch {torch.__version__}\n")

        print("## Bank bytes per token\n")
        print("| blocks | bank bytes / token (as stored) | KV bytes / token | Qwen2-7B KV bytes / token (computed) |")
        print("| --- | --- | --- | --- |")
        # Qwen2-7B: 28 layers, 4 KV heads of 128: values per token, at the bytes per value measured here
        values_7b = 2 * 28 * 4 * 128
        text_config = model.model.config
        values_tiny = (
            2
            * text_config.num_hidden_layers
            * text_config.num_key_value_heads
            * (text_config.hidden_size // text_config.num_attention_heads)
        )
        for label, bits, method in (
            ("every KV entry (`none`, 16-bit)", 16, "none"),
            ("LycheeMemory, 16-bit", 16, "learned"),
            ("LycheeMemory, 8-bit", 8, "learned"),
            ("LycheeMemory, 4-bit", 4, "learned"),
        ):
            if method == "none":
                wrapper = CompressedMemoryModel(
                    model.model, model.tokenizer, memory_config=config(bits, method=method), show_progress=False
                )
                ratio = 1
            else:
                wrapper = load_lychee(
                    folder, memory_config=config(bits), window=args.window, show_progress=False, dtype=dtype
                )
                ratio = args.ratio
            bank = wrapper.compress(text)
            kv = sum(sum(t.nbytes for t in (b.keys, b.values) if t is not None) for b in bank.blocks)
            per_value = kv / bank.num_tokens * ratio / values_tiny  # bytes per stored value, scales included
            seven = values_7b * per_value / ratio
            print(f"| {label} | {bank.nbytes / bank.num_tokens:.1f} | {kv / bank.num_tokens:.1f} | {seven:,.0f} |")

        print("\n## Time per question\n")
        reused = model
        gated = load_lychee(
            folder,
            memory_config=config(gate=GateConfig("lexical", top_k=2)),
            window=args.window,
            show_progress=False,
            dtype=dtype,
        )
        start = time.perf_counter()
        bank = reused.compress(text)
        compress_s = time.perf_counter() - start
        times: dict[str, list[float]] = {"reused": [], "gated": [], "theirs": []}
        reads: dict[str, list[int]] = {"reused": [], "gated": [], "theirs": []}
        same = True
        for question in questions:  # each question put to every way in turn, so load changes hit all alike
            outs = {}
            for name, run in (
                (
                    "reused",
                    lambda q: reused.answer(q, bank=bank, return_sources=True, max_new_tokens=args.answer_tokens),
                ),
                ("gated", lambda q: gated.answer(q, bank=bank, return_sources=True, max_new_tokens=args.answer_tokens)),
                (
                    "theirs",
                    lambda q: reused.answer(q, context=text, return_sources=True, max_new_tokens=args.answer_tokens),
                ),
            ):
                start = time.perf_counter()
                outs[name] = run(question)
                times[name].append(time.perf_counter() - start)
                reads[name].append(len(outs[name].trace.steps))
            same = same and [s.output_ids for s in outs["reused"].trace.steps] == [
                s.output_ids for s in outs["theirs"].trace.steps
            ]
        print(f"compression of the context once: {compress_s:.3f} s ({len(bank)} blocks)\n")
        print("| way | blocks read per question | median s / question | s for the 1st question | s for all |")
        print("| --- | --- | --- | --- | --- |")
        rows = (
            ("their loop: every chunk compressed again, every chunk read", "theirs", 0.0),
            ("compressmem: bank compressed once, every block read", "reused", compress_s),
            ("compressmem: bank compressed once, lexical gate passes 2", "gated", compress_s),
        )
        for label, key, once in rows:
            median = statistics.median(times[key])
            print(
                f"| {label} | {statistics.mean(reads[key]):.1f} | {median:.3f} | {once + times[key][0]:.3f} | "
                f"{once + sum(times[key]):.3f} |"
            )
        print(f"\n{len(questions)} questions; the notes written over a reused bank equal those of their loop: {same}")


if __name__ == "__main__":
    main()
