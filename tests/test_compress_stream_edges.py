"""A stream refused for its text is refused as `compress` refuses it and leaves no folder behind: text that is only
whitespace, pieces that are not text, and a file that stops being UTF-8 after the part checked up front (the command
line names the file and the byte)."""

import pytest

from compressmem import ChunkingConfig, ContextError, MemoryConfig, text_pieces
from compressmem.cli import main

from .conftest import tiny_wrapper

IDS = MemoryConfig(chunking=ChunkingConfig(64))


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_wrapper("llama", tokenizer, IDS)


def test_whitespace_is_refused_by_the_rule_compress_uses(model, tmp_path):
    with pytest.raises(ContextError, match="empty or only whitespace") as whole:
        model.compress("   ")
    with pytest.raises(ContextError, match="empty or only whitespace") as streamed:
        model.compress_stream(["", "   "], tmp_path / "bank")
    assert "there is nothing to read" in str(whole.value) and "there is nothing to read" in str(streamed.value)
    assert not (tmp_path / "bank").exists()
    with pytest.raises(ContextError, match="empty or only whitespace"):  # enough blank text to fill shards first
        model.compress_stream([" \n" * 5000], tmp_path / "bank", shard_blocks=1)
    assert not (tmp_path / "bank").exists()


def test_pieces_that_are_not_text_leave_no_folder(model, tmp_path):
    with pytest.raises(ContextError, match="must yield str pieces; got bytes"):
        model.compress_stream([b"x"], tmp_path / "bank")
    assert not (tmp_path / "bank").exists()
    (tmp_path / "empty").mkdir()  # a folder the user made is kept, as it was
    with pytest.raises(ContextError, match="must yield str pieces"):
        model.compress_stream(["Some text. " * 100, b"x"], tmp_path / "empty", shard_blocks=1)
    assert (tmp_path / "empty").is_dir() and not list((tmp_path / "empty").iterdir())


def _not_utf8_after(tmp_path, size):
    """A file of `size` bytes of text, then a byte that is not UTF-8, then more text."""
    path = tmp_path / "late.txt"
    line = b"The lighthouse keeper writes the tide tables by hand every evening.\n"
    path.write_bytes(line * (size // len(line)) + b"\xff" + line * 20)
    return path, size // len(line) * len(line)


def test_text_that_stops_being_utf8_leaves_no_interrupted_folder(model, tmp_path):
    path, _ = _not_utf8_after(tmp_path, 1 << 17)
    with pytest.raises(UnicodeDecodeError):
        model.compress_stream(text_pieces(path, piece_chars=1 << 14), tmp_path / "bank", shard_blocks=2)
    assert not (tmp_path / "bank").exists()


def test_the_command_line_names_the_file_and_byte_where_utf8_stops_after_the_first_mib(base_folder, tmp_path,
                                                                                    capsys):
    path, offset = _not_utf8_after(tmp_path, (1 << 20) + (1 << 18))
    config = tmp_path / "ids.json"
    IDS.save(config)
    code = main(["compress", str(path), "-o", str(tmp_path / "bank"), "--model", base_folder, "--config", str(config),
                 "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{path} is not UTF-8 text: invalid start byte at byte {offset}" in err and "convert it to text" in err
    assert not (tmp_path / "bank").exists()
