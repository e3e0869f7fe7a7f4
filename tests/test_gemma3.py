"""Any HF causal LM, on a second real architecture: Gemma-3-270M, a base model (no chat template) whose sliding-window
layers (512 tokens) sit among full-attention ones, each kind with its own RoPE."""

import pytest
import torch
from transformers import DynamicCache

from compressmem import ChunkingConfig, CompressionConfig, ConfigError, MemoryConfig, NotesConfig, ReadingConfig

pytestmark = pytest.mark.slow

FACT = "The lighthouse vault code is 4719283."
QUESTION = "What is the lighthouse vault code?"


def _document(essay_text: str) -> str:
    return essay_text[:5000] + f" {FACT} " + essay_text[5000:10000]


def test_gemma3_without_a_context_is_its_own_generate_and_with_one_reads_the_block_holding_the_fact(gemma3, essay_text):
    ids = gemma3.prompt_ids(QUESTION)
    assert gemma3.tokenizer.chat_template is None  # a base model: the prompt is the question's own tokens
    assert torch.equal(gemma3.generate(ids, max_new_tokens=8, do_sample=False),
                       gemma3.model.generate(ids, max_new_tokens=8, do_sample=False))
    document = _document(essay_text)
    out = gemma3.generate(ids, context=document, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    bank = gemma3.compress(document)
    at = document.index(FACT)
    # raw reading, the default gate: the fact's block is read first (the reads after it, if any, are the search
    # for an answer the judge finds grounded, which 8 new tokens of a base model may not give)
    assert out.trace[0].blocks_read[0] in bank.blocks_overlapping([(at, at + len(FACT))])
    assert out.sequences.shape[1] > ids.shape[1]


def test_gemma3_reads_a_block_as_its_text_when_a_read_fits_in_the_window_and_refuses_it_otherwise(gemma3,
                                                                                                   essay_text):
    wide = MemoryConfig(chunking=ChunkingConfig(512), compression=CompressionConfig("none"), gate=None,
                        reading=ReadingConfig("compressed"))
    with pytest.raises(ConfigError, match="sliding-window layers see only the last 512 tokens"):
        gemma3.with_config(wide)
    fits = wide.replace(chunking=ChunkingConfig(128), notes=NotesConfig(max_tokens=128, note_tokens=16))
    model = gemma3.with_config(fits)
    bank = model.compress(essay_text[:3000])
    prompt = model.prompts.update_ids(QUESTION, "")
    for index in (0, len(bank) - 1):
        block = bank.blocks[index]
        keys, values = torch.cat([bank.prefix_keys, block.keys], 2), torch.cat([bank.prefix_values, block.values], 2)
        cache = DynamicCache([(keys[i][None], values[i][None]) for i in range(keys.shape[0])])
        start = bank.prefix_ids.numel() + block.num_tokens
        with torch.no_grad():
            read = model.model(input_ids=prompt[None], cache=cache,
                               position_ids=torch.arange(start, start + prompt.numel())[None]).logits[0]
            raw = model.model(input_ids=torch.cat([bank.prefix_ids, block.token_ids, prompt])[None]).logits[0]
        torch.testing.assert_close(read, raw[-prompt.numel():], atol=2e-4, rtol=2e-4)
