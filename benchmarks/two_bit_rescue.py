"""Does keeping a few entries in full precision rescue 2-bit blocks? Variants on SmolLM2-135M-Instruct.

As `quantized_blocks.py`: for each seeded `niah_single` case the chunk that holds the needle is read as
its compressed block (method `none`, chunk 512). The attention sink is kept in every variant: the bank's
shared prefix (the chat template's opening, 34 tokens) always stays in full precision. Here the block's
KV is quantized and dequantised in place with each variant, so every variant is read by the same code;
the bytes per chunk token count what the variant would store (codes, float16 scales and zero points,
full-precision entries in bf16).

    python benchmarks/two_bit_rescue.py --length 4k --n 20
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

VARIANTS = {  # name: (key bits, value bits, group, recent entries kept, key channels kept)
    "4 bits (reference)": (4, 4, 64, 0, 0),
    "2 bits": (2, 2, 64, 0, 0),
    "2 bits, groups of 32": (2, 2, 32, 0, 0),
    "2 bits, groups of 16": (2, 2, 16, 0, 0),
    "2 bits, last 64 entries in bf16": (2, 2, 64, 64, 0),
    "2 bits, 4 outlier key channels in bf16": (2, 2, 64, 0, 4),
    "keys 4 bits, values 2 bits": (4, 2, 64, 0, 0),
    "keys 2 bits, values 4 bits": (2, 4, 64, 0, 0),
}


def variant_kv(keys: torch.Tensor, values: torch.Tensor, spec: tuple) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Keys and values `[layers, kv_heads, m, d]` as the variant reads them back, and its bytes per entry per head."""
    from compressmem.quantize import CHANNELS, TOKENS, quantize

    key_bits, value_bits, group, recent, channels = spec
    read_keys = quantize(keys, key_bits, group, TOKENS).dequantize(keys.dtype)
    read_values = quantize(values, value_bits, group, CHANNELS).dequantize(values.dtype)
    d = keys.shape[-1]
    per_entry = d * (key_bits + value_bits) / 8 + 2 * 2 * d / group * 2 + 4  # codes, scales and zeros, position
    if recent:
        read_keys[..., -recent:, :], read_values[..., -recent:, :] = keys[..., -recent:, :], values[..., -recent:, :]
        per_entry += min(recent, keys.shape[-2]) / keys.shape[-2] * 2 * 2 * d  # those entries also in bf16
    if channels:
        outliers = keys.abs().amax(dim=-2).topk(channels, dim=-1).indices  # [layers, kv_heads, channels]
        index = outliers.unsqueeze(-2).expand(-1, -1, keys.shape[-2], -1)
        read_keys.scatter_(-1, index, keys.gather(-1, index))
        per_entry += channels * 2  # the kept channels in bf16 (their codes are not stored)
    return read_keys, read_values, per_entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", default="4k")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from quantized_blocks import bf16_bytes_per_token, evidence_chunk

    from compressmem import (
        DEFAULT_MODEL,
        ChunkingConfig,
        CompressedMemoryModel,
        CompressionConfig,
        MemoryBank,
        MemoryConfig,
        NotesConfig,
        ReadingConfig,
    )
    from compressmem.eval import make_cases, parse_token_counts, substring_match

    config = MemoryConfig(chunking=ChunkingConfig(512), compression=CompressionConfig("none"), gate=None,
                          reading=ReadingConfig("compressed"), notes=NotesConfig(note_tokens=48))
    model = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, config=config, show_progress=False)
    text = model.model.config.get_text_config()
    per_head_entries = text.num_hidden_layers * text.num_key_value_heads
    cases = make_cases("niah_single", model.tokenizer, parse_token_counts(args.length)[0], args.n, args.seed)
    blocks = [(case, model.builder.bank([evidence_chunk(model, case)], model.model.device, show_progress=False))
              for case in cases]
    rows = []
    for name, spec in VARIANTS.items():
        found, per_token = 0, 0.0
        for case, bank in blocks:
            block = bank.blocks[0]
            keys, values, per_entry = variant_kv(block.keys, block.values, spec)
            read = dataclasses.replace(block, keys=keys, values=values)
            variant = MemoryBank.from_blocks([read], bank.prefix, bank.provenance)
            prompt = model.prompt_ids(case.question)
            out = model.generate(prompt, bank=variant, max_new_tokens=32, do_sample=False)
            found += substring_match(model.tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True),
                                     case.answers)
            per_token += per_entry * per_head_entries * block.num_entries / block.num_tokens / len(blocks)
        rows.append((name, int(found), per_token))
        print(f"{name}: {int(found)}/{len(blocks)}, {per_token:.0f} B/token", flush=True)
    bf16 = bf16_bytes_per_token(model)
    print(f"\nSmolLM2-135M-Instruct, {args.length} needles, n={len(blocks)}; bf16 KV = {bf16} B a chunk token\n")
    print("| variant | needle found | bytes per chunk token | vs bf16 KV |\n|---|---|---|---|")
    for name, found, per_token in rows:
        print(f"| {name} | {found}/{len(blocks)} | {per_token:.0f} | {per_token / bf16:.3f} |")


if __name__ == "__main__":
    main()
