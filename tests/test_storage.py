"""Streaming compression into a bank folder on disk, and reading it back block by block."""

import pytest
import torch

from compressmem import (
    ChunkingConfig,
    CompressionConfig,
    ContextError,
    GateConfig,
    MemoryBank,
    MemoryConfig,
    NotesConfig,
    ReadingConfig,
    text_pieces,
)
from compressmem.bank import BankWriter, MemoryStore

from .conftest import tiny_wrapper

CONFIG = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("select"),
                      gate=GateConfig("attention", layers=(1, 2)), reading=ReadingConfig("compressed"),
                      notes=NotesConfig(note_tokens=4))


@pytest.fixture(scope="module")
def document(tmp_path_factory, essay_text):
    path = tmp_path_factory.mktemp("doc") / "doc.txt"
    path.write_text(essay_text[:6000], encoding="utf-8")
    return path


def test_text_pieces_cut_before_spaces_and_lose_nothing(document):
    pieces = list(text_pieces(document, piece_chars=500))
    assert len(pieces) > 5 and "".join(pieces) == document.read_text(encoding="utf-8")
    assert all(piece.startswith(" ") for piece in pieces[1:])


def test_text_pieces_never_cut_inside_a_run_of_spaces(tokenizer, tmp_path):
    text = "".join(f"word{i}{' ' * (1 + i % 4)}" for i in range(400)) + "end"
    path = tmp_path / "spaces.txt"
    path.write_text(text, encoding="utf-8")
    for size in (7, 13, 64):
        pieces = list(text_pieces(path, piece_chars=size))
        assert "".join(pieces) == text
        assert all(piece[0] == " " and not piece[1].isspace() for piece in pieces[1:])
        ids = [i for piece in pieces for i in tokenizer(piece, add_special_tokens=False)["input_ids"]]
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="piece_chars must be a positive"):
        next(text_pieces(path, piece_chars=0))


def test_streamed_bank_equals_the_in_memory_bank(tokenizer, document, tmp_path):
    model = tiny_wrapper("llama", tokenizer, CONFIG)
    whole = model.compress(document.read_text(encoding="utf-8"))
    streamed = model.compress_stream(text_pieces(document, piece_chars=500), tmp_path / "bank", shard_blocks=3)
    assert not isinstance(streamed.store, MemoryStore) and len(list((tmp_path / "bank").glob("blocks-*"))) > 1
    assert len(streamed) == len(whole) and streamed.provenance == whole.provenance
    for ours, theirs in zip(streamed.blocks, whole.blocks):
        assert torch.equal(ours.token_ids, theirs.token_ids) and ours.char_span == theirs.char_span
        torch.testing.assert_close(ours.keys, theirs.keys)
        torch.testing.assert_close(ours.values, theirs.values)
        assert torch.equal(ours.positions, theirs.positions)
    reopened = MemoryBank.load(tmp_path / "bank")
    prompt = model.prompt_ids("What is the essay about?")
    from_disk = model.generate(prompt, bank=reopened, max_new_tokens=4, do_sample=False)
    in_memory = model.generate(prompt, bank=whole, max_new_tokens=4, do_sample=False)
    assert torch.equal(from_disk, in_memory)


def test_stream_errors_are_clear(tokenizer, tmp_path):
    model = tiny_wrapper("llama", tokenizer, CONFIG)
    with pytest.raises(ContextError, match="empty or only whitespace"):
        model.compress_stream(iter([""]), tmp_path / "empty")
    with pytest.raises(ContextError, match="str pieces"):
        model.compress_stream(iter([b"bytes"]), tmp_path / "bytes")
    kept = model.compress_stream(iter(["some text to keep"]), tmp_path / "kept")
    with pytest.raises(FileExistsError, match="already holds a memory bank"):
        BankWriter(tmp_path / "kept", kept.provenance)
