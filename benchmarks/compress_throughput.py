"""Compression throughput as a fraction of plain prefill throughput of the same model, same chunks.

Runs each compressor configuration and a plain forward pass over the same batches, alternating, and
prints tokens/s and the ratio. Compression is one forward pass plus scoring; anything far below
1.0 is overhead.

    python benchmarks/compress_throughput.py --tokens 16384 --chunk-size 512
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

HAYSTACK = Path(__file__).resolve().parents[2] / "shared" / "data" / "pg_essays.json"
KEYS = {"gate": "attention", "reading": "raw"}
EVERY_LAYER = {"gate": None, "reading": "compressed"}
CONFIGS = {  # (compression method, score, what the bank keeps)
    "select/keynorm r4, gate keys only (raw reading, attention gate)": ("select", "keynorm", KEYS),
    "select/observed r4, gate keys only": ("select", "observed", KEYS),
    "select/window r4, gate keys only": ("select", "window", KEYS),
    "select/keynorm r4, all layers (compressed reading)": ("select", "keynorm", EVERY_LAYER),
    "none r1, all layers (compressed reading)": ("none", None, EVERY_LAYER),
}


def configuration(chunk_size: int, method: str, score: str | None, kept: dict):
    from compressmem import ChunkingConfig, CompressionConfig, GateConfig, MemoryConfig, ReadingConfig

    gate = None if kept["gate"] is None else GateConfig(kept["gate"])
    return MemoryConfig(chunking=ChunkingConfig(chunk_size), compression=CompressionConfig(method, score=score),
                        gate=gate, reading=ReadingConfig(kept["reading"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--chunk-size", type=int, default=512)
    args = parser.parse_args()

    from compressmem import DEFAULT_MODEL, CompressedMemoryModel
    from compressmem.eval import load_haystack

    base = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, show_progress=False)
    ids = base.tokenizer(load_haystack(HAYSTACK)[:8 * args.tokens], add_special_tokens=False,
                         return_tensors="pt")["input_ids"][0, :args.tokens]
    batch = 4
    print("| configuration | compress tok/s | prefill tok/s | compress / prefill |\n|---|---|---|---|")
    for name, settings in CONFIGS.items():
        config = configuration(args.chunk_size, *settings)
        model = CompressedMemoryModel(base.model, base.tokenizer, memory_config=config, base_name=base.base_name,
                                      show_progress=False)
        start = time.perf_counter()
        model.compress(ids, batch_size=batch)
        compress_rate = ids.numel() / (time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            for chunk in ids.view(-1, batch, args.chunk_size):
                base.model(input_ids=chunk, logits_to_keep=1)
        prefill_rate = ids.numel() / (time.perf_counter() - start)
        print(f"| {name} | {compress_rate:.0f} | {prefill_rate:.0f} | {compress_rate / prefill_rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()
