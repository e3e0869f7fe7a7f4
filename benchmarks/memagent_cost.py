"""What MemAgent's own agent (`MemoryConfig.memagent()`) costs and answers on needle questions: per question, the
time, the reads, the tokens each memory rewrite wrote, and whether the answer holds the needle.

    python benchmarks/memagent_cost.py --length 4k --chunk-size 1024 --memory-tokens 128 --cases 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from compressmem import DEFAULT_MODEL, CompressedMemoryModel, MemoryConfig, NotesConfig
    from compressmem.config import MEMAGENT_CHUNK_SIZE, MEMAGENT_NOTES_TOKENS
    from compressmem.eval import default_data_dir, load_haystack, make_cases, parse_token_counts, substring_match

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=lambda s: parse_token_counts(s)[0], default=4096)
    parser.add_argument("--chunk-size", type=int, default=MEMAGENT_CHUNK_SIZE)
    parser.add_argument("--memory-tokens", type=int, default=MEMAGENT_NOTES_TOKENS)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--haystack", type=Path, help="RULER's pg_essays.json (default: in $COMPRESSMEM_DATA)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, show_progress=False)
    config = MemoryConfig.memagent(args.chunk_size, notes=NotesConfig("rewrite", max_tokens=args.memory_tokens))
    memagent = model.with_config(config, show_progress=False)
    haystack = load_haystack(args.haystack or (default_data_dir() or Path()) / "pg_essays.json")
    for case in make_cases("niah_single", model.tokenizer, args.length, args.cases, seed=args.seed, haystack=haystack):
        start = time.perf_counter()
        answer = memagent.answer(case.question, context=case.context, max_new_tokens=32, return_sources=True)
        record = {
            "seconds": round(time.perf_counter() - start, 1),
            "correct": bool(substring_match(answer.text, case.answers)),
            "reads": len(answer.trace.blocks_read),
            "tokens_written": [len(step.output_ids) for step in answer.trace.steps],
            "answer": answer.text,
            "gold": case.answers,
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
