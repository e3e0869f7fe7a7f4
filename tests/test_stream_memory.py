"""Streaming a context tokenizes it in small parts, with the tokens, offsets and chunks of the whole text.

A fast tokenizer's work for one call is several hundred bytes a token; handed the default 1 MiB pieces
whole, it made the process grow piece after piece (issue 17). `stream_chunks` now tokenizes parts of at
most 64K characters, cut just before a space that comes before a non-space.
"""

from __future__ import annotations

import tracemalloc

import pytest
import torch

from compressmem.chunking import split_into_chunks, stream_chunks, tokenize_context

PART_CHARS = 1 << 16  # the most characters the tokenizer may be handed at once where the text has spaces
MULTIBYTE = (" Ünïcödé façade, naïve café — 日本語のテキスト 😀😀 emoji;  two  spaces,   three,\n\n a paragraph,"
             "\ta tab and\u00a0a no-break space. ")


class RecordingTokenizer:
    """The tokenizer, noting the length of every text it is called on."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.texts: list[str] = []

    @property
    def lengths(self) -> list[int]:
        return [len(text) for text in self.texts]

    def __call__(self, text, **kwargs):
        self.texts.append(text)
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.fixture(scope="module")
def long_text(haystack) -> str:
    """About 1.1M characters of essays with multibyte text and runs of whitespace every 50K characters."""
    parts, size = [], 0
    while size < 1_100_000:
        for start in range(0, len(haystack), 50_000):
            parts.append(haystack[start:start + 50_000] + MULTIBYTE)
            size += len(parts[-1])
    return "".join(parts)[:1_100_000]


def flat(groups) -> list:
    return [chunk for group in groups for chunk in group]


def piecewise(pieces: list[str], tokenizer, chunk_size: int) -> list:
    """The chunks of tokenizing each piece whole (spans counted from the start of the stream): what streaming
    gave before, and the reference."""
    ids, offsets, base = [], [], 0
    for piece in pieces:
        encoded = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        ids += encoded["input_ids"]
        offsets += [(base + a, base + b) for a, b in encoded["offset_mapping"]]
        base += len(piece)
    return split_into_chunks([(torch.tensor(ids, dtype=torch.long), offsets)], chunk_size)


def assert_same_chunks(streamed: list, expected: list) -> None:
    assert len(streamed) == len(expected)
    for got, want in zip(streamed, expected):
        assert got.token_ids.dtype == want.token_ids.dtype == torch.long
        assert torch.equal(got.token_ids, want.token_ids)
        assert (got.document, got.token_start, got.char_span) == (want.document, want.token_start, want.char_span)


@pytest.mark.slow
def test_a_1_mib_piece_goes_to_the_tokenizer_in_parts_with_the_whole_texts_chunks(tokenizer, long_text):
    recording = RecordingTokenizer(tokenizer)
    streamed = flat(stream_chunks([long_text], recording, 512, 4))
    assert max(recording.lengths) <= PART_CHARS
    assert "".join(recording.texts).endswith(long_text)  # in order, after the tokenizer's short probe
    assert_same_chunks(streamed, split_into_chunks(tokenize_context(long_text, tokenizer), 512))


@pytest.mark.slow
def test_streaming_a_1_mib_piece_holds_a_part_not_the_piece_in_python_objects(tokenizer, long_text):
    piece = long_text[:1 << 20]
    next(stream_chunks([" warm up"], tokenizer, 4, 1))
    tracemalloc.start()
    try:
        for _ in stream_chunks([piece], tokenizer, 512, 4):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the lists of ids and offsets of 260K tokens took some 70 MiB; a 64K-character part's take a few
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB of Python objects to stream a 1 MiB piece"


@pytest.mark.slow
def test_pieces_without_spaces_and_several_pieces_keep_their_tokens_and_spans(tokenizer, long_text):
    no_spaces = "日本語のテキスト、句読点。" * 8_000 + "abc-def,ghi." * 10_000  # 224K characters, no space at all
    stretch = long_text[:300_000] + no_spaces + long_text[300_000:400_000]
    pieces = [long_text[:700_000], long_text[700_000:], no_spaces, stretch, " ", "", "x"]
    recording = RecordingTokenizer(tokenizer)
    streamed = flat(stream_chunks(pieces, recording, 300, 3))
    assert_same_chunks(streamed, piecewise(pieces, tokenizer, 300))
    # the stretch without spaces goes whole to the tokenizer, with what leads up to the next space at most
    assert max(recording.lengths) <= len(no_spaces) + PART_CHARS
    assert streamed[-1].char_span[1] == sum(len(piece) for piece in pieces)


def test_a_tokenizer_whose_tokens_change_at_such_cuts_gets_whole_pieces(tokenizer, monkeypatch):
    import compressmem.chunking as chunking

    assert chunking._cuts_before_spaces_are_exact(tokenizer)  # SmolLM2's byte-level BPE: parts are exact
    monkeypatch.setattr(chunking, "_cuts_before_spaces_are_exact", lambda tokenizer: False)
    recording = RecordingTokenizer(tokenizer)
    pieces = ["word " * 20_000, "more words " * 10_000]
    streamed = flat(stream_chunks(pieces, recording, 256, 2))
    assert recording.lengths == [len(piece) for piece in pieces]
    assert_same_chunks(streamed, piecewise(pieces, tokenizer, 256))


def test_parts_are_cut_before_a_space_that_comes_before_a_non_space():
    from compressmem.chunking import _parts

    assert list(_parts("ab cdefgh ij k", 4)) == ["ab", " cdefgh", " ij", " k"]
    assert list(_parts("a   b  ", 2)) == ["a  ", " b  "]  # not inside a run of spaces, nor at the end
    assert list(_parts("abcdefgh", 3)) == ["abcdefgh"]
    assert list(_parts("", 3)) == [""]
    assert list(_parts("a b c", None)) == ["a b c"]
