"""Which query-agnostic importance score should the training-free `select` compressor use?

For each score and ratio, on seeded 4K-token NIAH cases (chunk 1024) with SmolLM2-135M-Instruct:
- compressed read: the reasoner reads every compressed block (no gate), so accuracy measures what
  the compressed KV still holds;
- raw read with the attention gate (top-1): the compressed keys only steer the gate, the reasoner
  re-reads the raw chunk; accuracy and the gate's needle-block recall.

    python benchmarks/select_scores.py --cases 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

HAYSTACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "pg_essays.json"


def run(model, config, cases, banks) -> tuple[float, float]:
    from compressmem import CompressedMemoryModel
    from compressmem.eval import substring_match

    reader = CompressedMemoryModel(model.model, model.tokenizer, memory_config=config, base_name=model.base_name,
                                   show_progress=False)
    tok = model.tokenizer
    score = recall = 0
    for case, bank in zip(cases, banks):
        needle_block = bank.blocks_overlapping(list(case.evidence))[0]
        inputs = tok.apply_chat_template([{"role": "user", "content": case.question}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        out = reader.generate(**inputs, bank=bank, max_new_tokens=32, do_sample=False, return_dict_in_generate=True)
        answer = tok.decode(out.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        score += substring_match(answer, case.answers)
        recall += needle_block in out.trace[0].blocks_read
    return score / len(cases), recall / len(cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--scores", default="keynorm,observed,window")
    parser.add_argument("--ratios", default="2,4")
    args = parser.parse_args()

    from compressmem import (
        DEFAULT_MODEL,
        ChunkingConfig,
        CompressedMemoryModel,
        CompressionConfig,
        GateConfig,
        MemoryConfig,
        ReadingConfig,
    )
    from compressmem.eval import make_cases

    base = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, show_progress=False)
    cases = make_cases("niah_single", base.tokenizer, 4096, args.cases, seed=0)
    print("| score | ratio | compressed read: accuracy | raw read + attention gate: accuracy | gate needle recall |")
    print("|---|---|---|---|---|")
    for ratio in map(float, args.ratios.split(",")):
        for score in args.scores.split(","):
            compression = CompressionConfig("select", ratio, score)
            compressed = MemoryConfig(chunking=ChunkingConfig(1024), compression=compression, gate=None,
                                      reading=ReadingConfig("compressed"))
            builder = CompressedMemoryModel(base.model, base.tokenizer, memory_config=compressed,
                                            base_name=base.base_name, show_progress=False)
            banks = [builder.compress(case.context) for case in cases]
            accuracy, _ = run(base, compressed, cases, banks)
            gated = compressed.replace(reading=ReadingConfig("raw"), gate=GateConfig("attention", top_k=1))
            raw_accuracy, recall = run(base, gated, cases, banks)
            print(f"| {score} | {ratio:g} | {accuracy:.0%} | {raw_accuracy:.0%} | {recall:.0%} |", flush=True)


if __name__ == "__main__":
    main()
