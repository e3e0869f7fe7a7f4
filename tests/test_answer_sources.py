"""`answer(return_sources=True)` reports what was read, so a question with nothing to read is refused clearly."""

import pytest

from .conftest import tiny_wrapper


def test_sources_of_an_answer_with_nothing_read_are_refused_with_a_clear_error(tokenizer):
    wrapper = tiny_wrapper("llama", tokenizer)
    assert isinstance(wrapper.answer("Where is the cat?", max_new_tokens=2), str)  # no sources asked: answered
    with pytest.raises(ValueError, match="holds no traces of reading"):
        wrapper.answer("Where is the cat?", return_sources=True, max_new_tokens=2)
