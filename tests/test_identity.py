"""A block read as a KV prefix must behave exactly like the tokens it came from."""

import pytest
import torch
from transformers import DynamicCache

from compressmem import ChunkingConfig, CompressionConfig, GateConfig, MemoryConfig, ReadingConfig
from compressmem.reader import StepInput, generate_steps

from .conftest import ARCHS, tiny_wrapper

UNCOMPRESSED = MemoryConfig(chunking=ChunkingConfig(96), compression=CompressionConfig("none"),
                            reading=ReadingConfig("compressed"), gate=None)

PROMPT = "\n\nQuestion: what did the text say?"


def _logits_from_block(wrapper, bank, block_index, prompt_ids):
    block = bank.blocks[block_index]
    keys = torch.cat([bank.prefix_keys, block.keys], dim=2)
    values = torch.cat([bank.prefix_values, block.values], dim=2)
    cache = DynamicCache([(keys[i][None], values[i][None]) for i in range(keys.shape[0])])
    start = bank.prefix_ids.numel() + block.num_tokens
    positions = torch.arange(start, start + prompt_ids.numel())[None]
    with torch.no_grad():
        return wrapper.model(input_ids=prompt_ids[None], cache=cache, position_ids=positions).logits[0]


def _logits_from_tokens(wrapper, bank, block_index, prompt_ids, attention_mask=None):
    ids = torch.cat([bank.prefix_ids, bank.blocks[block_index].token_ids, prompt_ids])[None]
    with torch.no_grad():
        logits = wrapper.model(input_ids=ids, attention_mask=attention_mask).logits[0]
    return logits[-prompt_ids.numel():]


@pytest.mark.parametrize("arch", ARCHS)
def test_uncompressed_block_prefix_equals_reading_the_chunk(arch, tokenizer, essay_text):
    wrapper = tiny_wrapper(arch, tokenizer, UNCOMPRESSED)
    bank = wrapper.compress(essay_text[:3000])
    prompt = wrapper.prompts.encode(PROMPT)
    for index in (0, len(bank) - 1):
        expected = _logits_from_tokens(wrapper, bank, index, prompt)
        torch.testing.assert_close(_logits_from_block(wrapper, bank, index, prompt), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_uncompressed_block_prefix_equals_reading_the_chunk_smollm2(smollm2, essay_text):
    config = UNCOMPRESSED.replace(chunking=ChunkingConfig(256))
    wrapper = type(smollm2)(smollm2.model, smollm2.tokenizer, memory_config=config, base_name=smollm2.base_name,
                             show_progress=False)
    bank = wrapper.compress(essay_text[:2000])
    prompt = wrapper.prompts.encode(PROMPT)
    expected = _logits_from_tokens(wrapper, bank, 0, prompt)
    torch.testing.assert_close(_logits_from_block(wrapper, bank, 0, prompt), expected, atol=1e-4, rtol=1e-4)


def test_selected_block_continues_at_the_chunks_original_positions(tokenizer, essay_text):
    """Reference: the full token sequence, with each prompt query allowed to see only the chunk entries
    the compressor kept for its KV head. Any other placement of the prompt gives other logits."""
    config = UNCOMPRESSED.replace(chunking=ChunkingConfig(80),
                                  compression=CompressionConfig("select", ratio=2, score="observed"))
    wrapper = tiny_wrapper("llama", tokenizer, config, num_hidden_layers=1)  # one layer: one mask fits
    bank = wrapper.compress(essay_text[:1500])
    prompt = wrapper.prompts.encode(PROMPT)
    block = bank.blocks[1]
    prefix_len, chunk_len, prompt_len = bank.prefix_ids.numel(), block.num_tokens, prompt.numel()
    total = prefix_len + chunk_len + prompt_len
    heads = wrapper.model.config.num_attention_heads
    group = heads // block.positions.shape[1]
    mask = torch.ones(total, total, dtype=torch.bool).tril().expand(heads, -1, -1).clone()
    mask[:, prefix_len + chunk_len:, prefix_len:prefix_len + chunk_len] = False
    for head in range(heads):
        kept = block.positions[0, head // group].long()
        mask[head, prefix_len + chunk_len:, kept] = True
    expected = _logits_from_tokens(wrapper, bank, 1, prompt, attention_mask=mask[None])
    torch.testing.assert_close(_logits_from_block(wrapper, bank, 1, prompt), expected, atol=1e-5, rtol=1e-5)

    shifted = bank.blocks[1].keys.shape[-2]  # "compacted" placement: right after the kept entries
    cache_keys = torch.cat([bank.prefix_keys, block.keys], dim=2)
    cache_values = torch.cat([bank.prefix_values, block.values], dim=2)
    cache = DynamicCache([(cache_keys[i][None], cache_values[i][None]) for i in range(cache_keys.shape[0])])
    with torch.no_grad():
        wrong = wrapper.model(input_ids=prompt[None], cache=cache).logits[0]
    assert shifted < chunk_len and not torch.allclose(wrong, expected, atol=1e-3)


def test_batched_updates_with_ragged_blocks_match_single_rows(tokenizer, essay_text):
    """Left-padded caches and prompts must not change what each row generates."""
    wrapper = tiny_wrapper("qwen2", tokenizer, UNCOMPRESSED.replace(chunking=ChunkingConfig(64)))
    bank = wrapper.compress(essay_text[:1200])
    rows = []
    for index, question in ((0, "Who?"), (len(bank) - 1, "What is the longest question of them all, really?")):
        block = bank.blocks[index]
        keys, values = torch.cat([bank.prefix_keys, block.keys], 2), torch.cat([bank.prefix_values, block.values], 2)
        rows.append(StepInput(keys, values, wrapper.prompts.update_ids(question, ""),
                              bank.prefix_ids.numel() + block.num_tokens))
    raw = StepInput(None, None, torch.cat([bank.prefix_ids, bank.blocks[0].token_ids,
                                           wrapper.prompts.update_ids("Who?", "")]), 0)
    assert bank.blocks[-1].num_tokens != bank.blocks[0].num_tokens

    def generate(inputs):
        return [row.ids.tolist() for row in generate_steps(wrapper.model, tokenizer, inputs, 12)]

    batched = generate(rows + [raw])
    single = [generate([row])[0] for row in rows]
    assert batched[:2] == single
    assert batched[2] == single[0], "reading the raw chunk must equal reading its uncompressed block"


def test_gate_only_banks_stop_the_forward_after_the_last_gate_layer_with_the_same_keys(tokenizer, essay_text):
    select = CompressionConfig("select")
    gate_only = tiny_wrapper("llama", tokenizer, MemoryConfig(chunking=ChunkingConfig(64), compression=select,
                                                              gate=GateConfig("attention", layers=(1,))))
    full = tiny_wrapper("llama", tokenizer, UNCOMPRESSED.replace(chunking=ChunkingConfig(64), compression=select))
    calls = []
    hook = gate_only.model.model.layers[2].register_forward_hook(lambda *args: calls.append(1))
    keys_only = gate_only.compress(essay_text[:1500])
    hook.remove()
    assert not calls  # layers after the last gate layer never ran
    every_layer = full.compress(essay_text[:1500])
    for ours, theirs in zip(keys_only.blocks, every_layer.blocks):
        torch.testing.assert_close(ours.keys[0], theirs.keys[1])
        assert torch.equal(ours.positions[0], theirs.positions[1])
