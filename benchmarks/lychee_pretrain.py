"""Needles through the blocks of a LycheeMemory-design compressor pre-trained here for SmolLM2-135M-Instruct.

Issue 25, part 5. The run is `compressmem train pretrain --design lychee` (its folder is --checkpoint). For each
seeded `niah_single` case, the chunk that holds the needle is compressed and read as its compressed block (as
`quantized_blocks.py` does: `ReadingConfig("compressed")`, notes, greedy), with:

- the pre-trained LycheeMemory-design compressor (`lychee r4, trained`), at each of --bits;
- the same design as initialised, before any training (`lychee r4, initialised`: memory tokens are the base
  model's end-of-sequence token read by the base model's own projections), at each of --bits;
- the baselines of `quantized_blocks.py`: the learned compressor we ship (`learned r4`) and `none` blocks (every
  entry kept), at --baseline-bits.

Bytes per chunk token are the block's (scales, zero points and positions included), against the chunk's KV in
bfloat16. With --heldout FILE, the pre-training objective (the continuation loss after the block, 16-bit blocks)
is also measured for each compressor at each ratio of its mix, on the first --heldout-pairs windows of a text it
was not trained on.

    python benchmarks/lychee_pretrain.py --checkpoint RUN --lengths 4k --n 20 --out benchmarks/results/lychee-pretrain
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def notes_config(update: str):
    """`append` (the default reader: the note is the sentence of the section the read's output points at, so a
    block need only point at the needle's sentence) or `rewrite` (the read's own output is the note: the digits
    must come out of the block itself)."""
    from compressmem import NotesConfig

    return NotesConfig(note_tokens=48) if update == "append" else NotesConfig(update="rewrite", max_tokens=64)


def lychee_configuration(window: int, ratio: int, bits: int, group: int, update: str = "append"):
    """The MemoryConfig a LycheeMemory-design compressor's blocks are read with: chunks of its window."""
    from compressmem import ChunkingConfig, CompressionConfig, MemoryConfig, ReadingConfig

    compression = CompressionConfig("learned", ratio, bits=bits, group=None if bits == 16 else group)
    return MemoryConfig(chunking=ChunkingConfig(window), compression=compression, gate=None,
                        reading=ReadingConfig("compressed"), notes=notes_config(update))


def heldout_losses(models, text: str, args) -> None:
    """The continuation loss after the block (the pre-training objective, 16-bit blocks) of each compressor at
    each ratio of its mix, on the first `--heldout-pairs` windows of `text`; printed and written to heldout.md."""
    import torch

    from compressmem.training.pretrain import continuation_loss, training_pairs

    lines = ["| compressor | ratio | held-out continuation loss |", "|---|---|---|"]
    for label, wrapper in models:
        model = wrapper.with_config(
            lychee_configuration(wrapper.compressor.settings.window, args.ratio, 16, args.group)
        )
        pairs = training_pairs(model, [text], args.continuation_tokens)[: args.heldout_pairs]
        window = model.memory_config.chunking.size
        for ratio in model.compressor.settings.ratios:
            with torch.no_grad():
                losses = [
                    continuation_loss(model, pairs[i : i + 2, :window], pairs[i : i + 2, window:], ratio).item()
                    for i in range(0, len(pairs), 2)
                ]
            lines.append(f"| {label} | {ratio} | {sum(losses) / len(losses):.3f} |")
            print(lines[-1], flush=True)
    (args.out / "heldout.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="the pre-training run's folder (a compressmem checkpoint)")
    parser.add_argument("--initialised", action="store_true", help="also the design as initialised (no training)")
    parser.add_argument("--lengths", default="4k")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratio", type=int, default=4)
    parser.add_argument("--window", type=int, default=256, help="window of the initialised compressor")
    parser.add_argument("--bits", default="16,4")
    parser.add_argument("--baselines", default="none,learned r4", help="quantized_blocks.py methods ('' for none)")
    parser.add_argument("--baseline-bits", default="4")
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--heldout", type=Path, help="a text not trained on, for the objective's held-out loss")
    parser.add_argument("--heldout-pairs", type=int, default=16)
    parser.add_argument("--continuation-tokens", type=int, default=128)
    parser.add_argument("--notes", default="append", help="append, rewrite or both (see notes_config)")
    parser.add_argument("--skip-needles", action="store_true", help="only the held-out loss")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from quantized_blocks import bf16_bytes_per_token, configurations, run_case

    from compressmem import DEFAULT_MODEL, ChunkingConfig, CompressedMemoryModel, MemoryConfig
    from compressmem.checkpoints import SMOLLM2_LEARNED
    from compressmem.eval import make_cases, parse_token_counts
    from compressmem.training.pretrain import start_or_resume

    bits = [int(b) for b in args.bits.split(",")]
    models = []  # (label, wrapper whose compressor the configurations keep)
    if args.checkpoint is not None:
        trained = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, checkpoint=args.checkpoint,
                                                        show_progress=False)
        models.append(("trained", trained))
    shipped = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, checkpoint=SMOLLM2_LEARNED, show_progress=False)
    if args.initialised:
        plain = CompressedMemoryModel(shipped.model, shipped.tokenizer,
                                      memory_config=MemoryConfig(chunking=ChunkingConfig(args.window)),
                                      base_name=DEFAULT_MODEL, show_progress=False)
        models.append(("initialised", start_or_resume(plain, "/nonexistent-run", ratio=args.ratio, design="lychee")))
    bf16 = bf16_bytes_per_token(shipped)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.heldout is not None:
        heldout_losses(models, args.heldout.read_text(encoding="utf-8"), args)
    if args.skip_needles:
        return
    rows = []
    with open(args.out / "cases.jsonl", "w", encoding="utf-8") as log:
        for length in parse_token_counts(args.lengths):
            cases = make_cases("niah_single", shipped.tokenizer, length, args.n, args.seed)
            runs = []
            for update in ("append", "rewrite") if args.notes == "both" else (args.notes,):
                for label, wrapper in models:
                    window = wrapper.compressor.settings.window
                    for b in bits:
                        config = lychee_configuration(window, args.ratio, b, args.group, update)
                        runs.append((f"lychee r{args.ratio}, {label}, {b} bits, {update}", wrapper.with_config(config)))
                if args.baselines:
                    baseline_bits = [int(b) for b in args.baseline_bits.split(",")]
                    for name, config in configurations(args.baselines.split(","), baseline_bits, args.group):
                        runs.append((f"{name}, {update}",
                                     shipped.with_config(config.replace(notes=notes_config(update)),
                                                         show_progress=False)))
            for name, model in runs:
                results = [run_case(model, case) for case in cases]
                for case, result in zip(cases, results):
                    log.write(json.dumps({"length": length, "config": name, "case_id": case.case_id, **result}) + "\n")
                log.flush()
                per_token = sum(r["bytes_per_token"] for r in results) / len(results)
                found = int(sum(r["correct"] for r in results))
                seconds = sum(r["seconds"] for r in results) / len(results)
                rows.append((length, name, found, len(results), per_token, per_token / bf16, seconds))
                print(f"{length} {name}: {found}/{len(results)}, {per_token:.0f} B/token "
                      f"({per_token / bf16:.3f} of bf16), {seconds:.1f} s a case", flush=True)
    table = ["| length | block | needle found | bytes per chunk token | vs bf16 KV | s per case |",
             "|---|---|---|---|---|---|"]
    table += [f"| {length} | {name} | {found}/{n} | {per_token:.0f} | {ratio:.3f} | {seconds:.1f} |"
              for length, name, found, n, per_token, ratio, seconds in rows]
    text = (f"SmolLM2-135M-Instruct, CPU; bf16 KV = {bf16} bytes a chunk token; groups of {args.group}; "
            f"checkpoint {args.checkpoint}\n\n" + "\n".join(table) + "\n")
    (args.out / "summary.md").write_text(text, encoding="utf-8")
    print("\n" + text)


if __name__ == "__main__":
    main()
