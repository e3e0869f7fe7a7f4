"""`decode_text`: one sequence of token ids to its text, a batch refused."""

import pytest
import torch

from compressmem.hf.tokens import chat_ids, chat_text, decode_text, text_ids


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


CHAT = [{"role": "user", "content": "Where is the cat?"}]


def test_chat_text_and_chat_ids_are_the_same_prompt(tokenizer):
    text = chat_text(tokenizer, CHAT)
    assert "Where is the cat?" in text
    assert text == tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = chat_ids(tokenizer, CHAT)
    assert ids.shape[0] == 1 and ids.dtype == torch.long
    assert tokenizer.decode(ids[0]) == text


def test_text_ids_are_the_tokenizers_prompt_ids(tokenizer):
    ids = text_ids(tokenizer, "The cat sat.")
    assert ids.shape[0] == 1
    assert ids[0].tolist() == tokenizer("The cat sat.")["input_ids"]
