"""Peak memory of one evaluation case per token of its context, the constant behind `compressmem eval`'s memory
check (`compressmem.eval.runner.EVAL_BYTES_PER_TOKEN`): making the case (the haystack cut by the tokenizer), then
compressing it and building the lexical gate's index. The semantic gate's embeddings add about 70 bytes a token
(35 kept with the bank, 35 remembered by the process: benchmarks/RESULTS.md).

    python benchmarks/eval_memory.py --length 512k
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", default="512k")
    args = parser.parse_args()

    from compressmem import DEFAULT_MODEL, CompressedMemoryModel, GateConfig, MemoryConfig
    from compressmem.eval import PeakMemory, make_cases, parse_token_counts

    length = parse_token_counts(args.length)[0]
    config = MemoryConfig(gate=GateConfig("lexical"))
    model = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, config=config, show_progress=False)
    with PeakMemory() as made:
        case = make_cases("niah_single", model.tokenizer, length, 1, 0)[0]
    with PeakMemory() as compressed:
        bank = model.compress(case.context)
        if model.reasoner.gate is not None:
            model.reasoner.gate.index(bank, model.model)
    print(f"{length} tokens: making the case {made.increase_bytes / length:.0f} bytes a token at peak, "
          f"compressing and indexing it {compressed.increase_bytes / length:.0f} more")


if __name__ == "__main__":
    main()
