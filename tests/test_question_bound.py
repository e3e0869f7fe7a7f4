"""A question too long to be read with is refused before any work, with the numbers (issue 26, item 7)."""

from __future__ import annotations

import pytest

from compressmem import ChunkingConfig, ContextError, MemoryConfig

from .conftest import tiny_wrapper

CONTEXT = "The ferry left at dawn and the gulls followed it out of the harbour. " * 20


@pytest.fixture(scope="module")
def reader(tokenizer):
    wrapper = tiny_wrapper("llama", tokenizer, MemoryConfig(chunking=ChunkingConfig(40)))
    return wrapper, wrapper.compress(CONTEXT)


@pytest.mark.parametrize("characters", [18_000, 1_000_000])
def test_a_question_longer_than_the_window_allows_is_refused_with_the_numbers(reader, characters):
    wrapper, bank = reader
    question = ("Why did the ferry leave so early " * (characters // 33 + 1))[:characters] + "?"
    with pytest.raises(ContextError, match=r"The question is \d+ tokens; .* at most \d+ tokens\. Shorten"):
        wrapper.answer(question, bank=bank, max_new_tokens=2)


def test_a_long_question_that_fits_is_read(reader):
    wrapper, bank = reader
    question = "Why did the ferry leave at dawn, " * 40 + "and where did the gulls go?"
    answer = wrapper.answer(question, bank=bank, max_new_tokens=2, return_sources=True)
    assert answer.trace.blocks_read  # read, not refused
