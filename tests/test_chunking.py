import pytest
import torch

from compressmem import ContextError
from compressmem.chunking import split_into_chunks, tokenize_context


def test_chunks_are_token_exact_and_map_back_to_the_text(tokenizer, essay_text):
    text = essay_text[:6000]
    chunks = split_into_chunks(tokenize_context(text, tokenizer), 100)
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert torch.cat([c.token_ids for c in chunks]).tolist() == expected
    assert all(c.token_ids.numel() == 100 for c in chunks[:-1]) and 0 < chunks[-1].token_ids.numel() <= 100
    for chunk in chunks:
        start, end = chunk.char_span
        assert tokenizer(text[start:end], add_special_tokens=False)["input_ids"][:5] == chunk.token_ids[:5].tolist()
    assert [c.token_start for c in chunks] == list(range(0, len(expected), 100))


def test_a_list_of_documents_never_shares_a_chunk(tokenizer):
    docs = ["First document about apples. " * 20, "Second one, on pears. " * 3]
    chunks = split_into_chunks(tokenize_context(docs, tokenizer), 50)
    assert {c.document for c in chunks} == {0, 1}
    for doc_index, doc in enumerate(docs):
        ids = torch.cat([c.token_ids for c in chunks if c.document == doc_index]).tolist()
        assert ids == tokenizer(doc, add_special_tokens=False)["input_ids"]


def test_token_ids_and_tensors_are_accepted(tokenizer):
    ids = list(range(10, 40))
    from_list = split_into_chunks(tokenize_context(ids, tokenizer), 8)
    from_tensor = split_into_chunks(tokenize_context(torch.tensor([ids]), tokenizer), 8)
    assert [c.token_ids.tolist() for c in from_list] == [c.token_ids.tolist() for c in from_tensor]
    assert from_list[0].char_span is None


@pytest.mark.parametrize("context, message", [
    ("", "empty"), ("   \n", "empty"), ([], "empty list"), (b"bytes", "str"), ({"text": "x"}, "str"),
    (torch.zeros(3, 4, dtype=torch.long), "1-D"), (torch.rand(5), "integer"), (torch.tensor([], dtype=torch.long), "no tokens"),
    (["ok", 3], "only strings"), (["fine", ""], "Document 1"), (3.5, "str"),
    ([2**32 + 42, 2**32 + 43], "4294967339 of the context is not a token"), ([10**9], "not a token"),
    ([-1, 5], "-1 of the context is not a token"), (torch.tensor([5, 49152]), "not a token"), ([2**70], "too large"),
])
def test_bad_contexts_get_clear_errors(tokenizer, context, message):
    with pytest.raises(ContextError, match=message):
        tokenize_context(context, tokenizer)


def test_a_streamed_context_must_be_pieces_not_one_string(tokenizer, tmp_path):
    from compressmem.chunking import stream_chunks

    for pieces in ("some text", b"bytes", 42):
        with pytest.raises(ContextError, match="iterable of text pieces"):
            next(stream_chunks(pieces, tokenizer, 64, 4))
