"""`decode_text`: one sequence of token ids to its text, a batch refused."""

import pytest
import torch

from compressmem.hf.tokens import decode_text


def test_decode_text_gives_the_text_of_a_list_or_a_tensor(tokenizer):
    ids = tokenizer("The cat sat.", add_special_tokens=False)["input_ids"]
    assert decode_text(tokenizer, ids) == "The cat sat."
    assert decode_text(tokenizer, torch.tensor(ids)) == "The cat sat."


def test_decode_text_skips_special_tokens_only_when_asked(tokenizer):
    ids = [tokenizer.eos_token_id, *tokenizer("hi", add_special_tokens=False)["input_ids"]]
    assert decode_text(tokenizer, ids) == tokenizer.eos_token + "hi"
    assert decode_text(tokenizer, ids, skip_special_tokens=True) == "hi"


def test_decode_text_refuses_a_batch(tokenizer):
    with pytest.raises(TypeError, match="one sequence"):
        decode_text(tokenizer, [[1, 2], [3]])  # type: ignore[arg-type]
