"""A bank on disk is read as written or refused, naming the file: edited indexes and tables, swapped,
damaged, missing or escaping shards, and interrupted compressions (resumed, not left half-written)."""

import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compressmem import (
    BankMismatchError,
    ChunkingConfig,
    CompressionConfig,
    GateConfig,
    MemoryBank,
    MemoryConfig,
    NotesConfig,
    ReadingConfig,
)

from .conftest import tiny_wrapper

CHUNKS = ChunkingConfig(64)
KV = MemoryConfig(chunking=CHUNKS, compression=CompressionConfig("select", ratio=4),
                  reading=ReadingConfig("compressed"))


@pytest.fixture(scope="module")
def kv_bank(tokenizer, essay_text):
    return tiny_wrapper("llama", tokenizer, KV).compress(essay_text[:2000])


@pytest.fixture(scope="module")
def ids_wrapper(tokenizer):
    return tiny_wrapper("llama", tokenizer, MemoryConfig(chunking=CHUNKS))


def _rewrite_file(path, out, edit_tensors=None, edit_index=None):
    """Copy a single-file bank with its tensors or its metadata index edited."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    if edit_tensors:
        edit_tensors(tensors)
    if edit_index:
        index = json.loads(metadata["index"])
        edit_index(index)
        metadata["index"] = json.dumps(index)
    save_file(tensors, str(out), metadata=metadata)
    return out


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_a_file_bank_whose_header_changed_a_dtype_is_refused_when_read(kv_bank, tmp_path):
    kv_bank.save(tmp_path / "bank.safetensors")

    def keys_as_ints(tensors):
        tensors["1.keys"] = tensors["1.keys"].view(torch.int32)  # same bytes, the header says I32

    edited = MemoryBank.load(_rewrite_file(tmp_path / "bank.safetensors", tmp_path / "edited.safetensors",
                                           keys_as_ints))
    assert torch.equal(edited.blocks[0].keys, kv_bank.blocks[0].keys)  # the untouched blocks still read
    with pytest.raises(BankMismatchError, match=r"Block 1's keys in .*edited.safetensors are not what was written"):
        edited.blocks[1]
    with pytest.raises(BankMismatchError, match="Block 1's keys"):
        edited.verify()


@pytest.mark.parametrize("edit, what", [
    (lambda index: index["provenance"].update(layers=index["provenance"]["layers"][::-1]), "layers reordered"),
    (lambda index: index.update(blocks=index["blocks"] // 2), "blocks cut"),
])
def test_a_file_bank_whose_index_was_edited_is_refused_when_opened(kv_bank, tmp_path, edit, what):
    kv_bank.save(tmp_path / "bank.safetensors")
    cut = what == "blocks cut"

    def halve(tensors):
        tensors["block_table"] = tensors["block_table"][: len(kv_bank) // 2].clone()
        tensors["block_digests"] = tensors["block_digests"][: len(kv_bank) // 2].clone()

    edited = _rewrite_file(tmp_path / "bank.safetensors", tmp_path / "edited.safetensors", halve if cut else None,
                           edit)
    with pytest.raises(BankMismatchError, match="edited.safetensors does not match its seal"):
        MemoryBank.load(edited)


def test_a_folder_whose_index_or_table_was_edited_is_refused_when_opened(kv_bank, tmp_path):
    folder = tmp_path / "bank"
    kv_bank.save(folder, folder=True, shard_blocks=2)
    half = len(kv_bank) // 2

    def cut_table(name):
        tensors = load_file(str(name))
        save_file({k: v[:half].clone() for k, v in tensors.items()}, str(name))

    edits = {
        "layers reordered": lambda f: _edit_json(f / "bank.json", lambda d: d["provenance"].update(
            layers=d["provenance"]["layers"][::-1])),
        "blocks cut": lambda f: (_edit_json(f / "bank.json", lambda d: d.update(blocks=half)),
                                 cut_table(f / "table.safetensors")),
        "a block repeated": lambda f: save_file(
            {k: torch.cat([v[:1], v[:-1]]).clone() for k, v in load_file(str(f / "table.safetensors")).items()},
            str(f / "table.safetensors")),
    }
    for what, edit in edits.items():
        copy = tmp_path / what.replace(" ", "-")
        shutil.copytree(folder, copy)
        edit(copy)
        with pytest.raises(BankMismatchError, match="does not match its seal"):
            MemoryBank.load(copy)
    assert len(MemoryBank.load(folder)) == len(kv_bank)  # the original opens


def test_another_banks_shard_of_the_same_size_is_refused_before_any_block_of_it_is_used(ids_wrapper, essay_text,
                                                                                         tmp_path):
    ids = ids_wrapper.tokenizer(essay_text, add_special_tokens=False)["input_ids"]
    mine = ids_wrapper.compress(ids[:640])  # token ids: blocks of equal sizes, shards of equal bytes
    other = ids_wrapper.compress(ids[640:1280])
    mine.save(tmp_path / "mine", folder=True, shard_blocks=4)
    other.save(tmp_path / "other", folder=True, shard_blocks=4)
    swapped = tmp_path / "mine" / "blocks-00001.safetensors"
    replacement = tmp_path / "other" / "blocks-00001.safetensors"
    assert swapped.stat().st_size == replacement.stat().st_size
    shutil.copy(replacement, swapped)
    bank = MemoryBank.load(tmp_path / "mine")  # opening checks sizes only, to stay fast at any length
    assert torch.equal(bank.token_ids(0), mine.token_ids(0))  # shard 0 is intact
    for read in (lambda: bank.token_ids(5), lambda: bank.blocks[4], bank.verify):  # blocks 4-7 are in shard 1
        with pytest.raises(BankMismatchError, match="blocks-00001.safetensors holds other blocks than this bank's"):
            read()


def test_a_damaged_shard_is_caught_by_its_size_or_its_digests(ids_wrapper, essay_text, tmp_path):
    bank = ids_wrapper.compress(essay_text[:3000])
    folder = tmp_path / "bank"
    bank.save(folder, folder=True, shard_blocks=4)
    shard = folder / "blocks-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte inside a token id
    shard.write_bytes(bytes(data))
    damaged = MemoryBank.load(folder)  # same size, same header: opening cannot tell
    with pytest.raises(BankMismatchError, match="token_ids in .*blocks-00000.safetensors are not what was written"):
        MemoryBank.load(folder, verify=True)
    wrong = [i for i in range(len(damaged)) if damaged.infos.column("shard")[i] == 0]
    with pytest.raises(BankMismatchError, match="token_ids in .*blocks-00000.safetensors are not what was written"):
        for i in wrong:
            damaged.token_ids(i)
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(BankMismatchError, match=r"blocks-00000.safetensors holds \d+ bytes where the bank's index"):
        MemoryBank.load(folder)


@pytest.mark.parametrize("name", ["../other/blocks-00000.safetensors", "../../../../etc/passwd", 7])
def test_shard_paths_must_stay_inside_the_folder(ids_wrapper, essay_text, tmp_path, name):
    ids_wrapper.compress(essay_text[:1000]).save(tmp_path / "bank", folder=True)
    _edit_json(tmp_path / "bank" / "bank.json", lambda d: d["shards"][0].update(file=name))
    with pytest.raises(BankMismatchError, match="not inside the bank folder"):
        MemoryBank.load(tmp_path / "bank")


def test_a_gate_index_kept_for_another_bank_is_rebuilt_not_used(ids_wrapper, essay_text, tmp_path, caplog):
    ids_wrapper.compress_stream([essay_text[:3000]], tmp_path / "first")
    ids_wrapper.compress_stream([essay_text[3000:6000]], tmp_path / "second")
    derived = sorted(p.name for p in (tmp_path / "first").glob("derived-*.safetensors"))
    assert derived
    for name in derived:
        shutil.copy(tmp_path / "first" / name, tmp_path / "second" / name)
    reopened = MemoryBank.load(tmp_path / "second")
    name = derived[0].removeprefix("derived-").removesuffix(".safetensors")
    with caplog.at_level("WARNING"):
        assert reopened.derived(name) is None
    assert "was built for another bank" in caplog.text
    assert MemoryBank.load(tmp_path / "first").derived(name) is not None


class Interrupted(Exception):
    pass


def _pieces(text, size, stop_after=None):
    """`text` in pieces of about `size` characters cut before spaces, raising after `stop_after` pieces."""
    start = 0
    count = 0
    while start < len(text):
        cut = text.find(" ", start + size)
        end = len(text) if cut < 0 else cut
        if stop_after is not None and count == stop_after:
            raise Interrupted
        yield text[start:end]
        start, count = end, count + 1


def _count_compressed(wrapper, monkeypatch):
    """Count the chunks the wrapper's builder compresses."""
    counted = []
    original = wrapper.builder.blocks

    def blocks(chunks, *args, **kwargs):
        counted.extend(chunks)
        return original(chunks, *args, **kwargs)

    monkeypatch.setattr(wrapper.builder, "blocks", blocks)
    return counted


def test_an_interrupted_stream_is_reported_incomplete_and_resumed_by_a_rerun(tokenizer, essay_text, tmp_path,
                                                                               monkeypatch):
    wrapper = tiny_wrapper("llama", tokenizer, KV)
    text = essay_text[:6000]
    whole = wrapper.compress_stream(_pieces(text, 400), tmp_path / "whole", shard_blocks=3, batch_size=2)

    folder = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        wrapper.compress_stream(_pieces(text, 400, stop_after=10), folder, shard_blocks=3, batch_size=2)
    written = sorted(p.name for p in folder.glob("blocks-*.safetensors"))
    assert written and not (folder / "bank.json").exists()
    (folder / "blocks-00099.safetensors.partial").write_bytes(b"half a shard")  # a shard cut by the kill
    with pytest.raises(BankMismatchError, match=f"incomplete bank: its compression was interrupted after "
                                                f"{len(written)} shards.*again to resume"):
        MemoryBank.load(folder)
    with pytest.raises(FileExistsError, match="interrupted compression"):
        whole.save(folder, folder=True)

    with pytest.raises(BankMismatchError, match="interrupted compression of another text"):
        wrapper.compress_stream(_pieces(essay_text[6000:12000], 400), folder, shard_blocks=3, batch_size=2)

    compressed = _count_compressed(wrapper, monkeypatch)
    resumed = wrapper.compress_stream(_pieces(text, 400), folder, shard_blocks=3, batch_size=2)
    done = 3 * len(written) // 2 * 2  # the groups of 2 chunks whose blocks are all in complete shards
    assert len(compressed) == len(whole) - done  # only what the interrupted run had not written
    assert sorted(p.name for p in folder.glob("blocks-*")) == sorted(p.name for p in (tmp_path / "whole").glob(
        "blocks-*"))  # no orphan or partial shard left
    assert len(resumed) == len(whole) and resumed.infos.table.equal(whole.infos.table)
    for a, b in zip(whole.blocks, resumed.blocks):
        assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.keys, b.keys)
        assert torch.equal(a.values, b.values) and torch.equal(a.positions, b.positions)
    MemoryBank.load(folder, verify=True)


def test_an_interrupted_stream_with_other_settings_is_not_resumed(tokenizer, essay_text, tmp_path):
    wrapper = tiny_wrapper("llama", tokenizer, KV)
    folder = tmp_path / "bank"
    with pytest.raises(Interrupted):
        wrapper.compress_stream(_pieces(essay_text[:6000], 400, stop_after=10), folder, shard_blocks=3, batch_size=2)
    other = tiny_wrapper("llama", tokenizer, KV.replace(compression=CompressionConfig("select", ratio=2)))
    with pytest.raises(BankMismatchError, match="interrupted compression made with other settings"):
        other.compress_stream(_pieces(essay_text[:6000], 400), folder, shard_blocks=3, batch_size=2)


def test_unreadable_bank_files_are_named(ids_wrapper, essay_text, tmp_path, caplog):
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(BankMismatchError, match="garbage.safetensors is not a readable safetensors file"):
        MemoryBank.load(tmp_path / "garbage.safetensors")
    folder = tmp_path / "bank"
    ids_wrapper.compress_stream([essay_text[:3000]], folder)
    derived = next(folder.glob("derived-*.safetensors"))
    derived.write_bytes(derived.read_bytes()[:40])  # a damaged gate index: a cache, rebuilt
    name = derived.name.removeprefix("derived-").removesuffix(".safetensors")
    with caplog.at_level("WARNING"):
        assert MemoryBank.load(folder).derived(name) is None
    assert f"{derived} is damaged" in caplog.text
    (folder / "prefix.safetensors").unlink()
    with pytest.raises(BankMismatchError, match="prefix.safetensors is not a readable safetensors file"):
        MemoryBank.load(folder)


@pytest.mark.parametrize("version", ["abc", None, 99])
def test_a_bank_format_version_that_is_not_one_we_read_is_refused(ids_wrapper, essay_text, tmp_path, version):
    ids_wrapper.compress(essay_text[:1000]).save(tmp_path / "bank", folder=True)
    _edit_json(tmp_path / "bank" / "bank.json", lambda d: d.update(format_version=version))
    message = "uses bank format 99; this compressmem reads up to" if version == 99 else "has no valid bank format"
    with pytest.raises(BankMismatchError, match=message):
        MemoryBank.load(tmp_path / "bank")


@pytest.mark.parametrize("shard_blocks", [0, -1, 2.5, True])
def test_shard_blocks_must_be_a_positive_count(ids_wrapper, essay_text, tmp_path, shard_blocks):
    with pytest.raises(ValueError, match="shard_blocks must be a positive number of blocks per shard"):
        ids_wrapper.compress_stream([essay_text[:1000]], tmp_path / "bank", shard_blocks=shard_blocks)
    assert not (tmp_path / "bank").exists()


LEXICAL = MemoryConfig(chunking=CHUNKS, notes=NotesConfig(note_tokens=4))
QUESTION = "What did the founders of the startup learn about investors?"


@pytest.fixture(scope="module")
def lexical_model(tokenizer):
    return tiny_wrapper("llama", tokenizer, LEXICAL)


def _flip_a_letter(path, text: bytes):
    """Change one letter inside `text`, found once in the file at `path`."""
    data = bytearray(path.read_bytes())
    at = data.find(text)
    assert at >= 0 and data.find(text, at + 1) < 0
    letter = next(i for i in range(at + len(text) // 2, at + len(text)) if chr(data[i]).isalpha())
    data[letter] = ord("q") if data[letter] != ord("q") else ord("z")
    path.write_bytes(bytes(data))


def _redirect(path, name):
    """Point every posting of the index tensor `name` in the file at `path` at a block far out of range."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    tensors[name] = torch.full_like(tensors[name], 10**6)
    save_file(tensors, str(path), metadata=metadata)


def _answer(model, bank):
    out = model.generate(model.prompt_ids(QUESTION), bank=bank, max_new_tokens=3, do_sample=False,
                         return_dict_in_generate=True)
    return out.sequences, out.trace[0].blocks_read


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
@pytest.mark.parametrize("damage", ["vocabulary", "postings"])
def test_a_kept_bm25_index_that_was_changed_is_rebuilt_with_a_warning_and_refused_by_verify(
        lexical_model, essay_text, tmp_path, caplog, folder, damage):
    bank = lexical_model.compress(essay_text[:3000])
    lexical_model.prepare(bank)  # builds the BM25 index, kept with the bank and saved with it
    built = bank.derived("lexical")[0]
    path = tmp_path / ("bank" if folder else "bank.safetensors")
    bank.save(path, folder=folder)
    kept_in = path / "derived-lexical.safetensors" if folder else path
    if damage == "vocabulary":
        _flip_a_letter(kept_in, bytes(built["vocabulary"].numpy()))
    else:
        _redirect(kept_in, "blocks" if folder else "derived.lexical.blocks")
    damaged = MemoryBank.load(path)  # its blocks are intact: it opens
    with pytest.raises(BankMismatchError, match=f"{re.escape(str(kept_in))}.* edited or damaged"):
        damaged.verify()
    with caplog.at_level("WARNING"):
        answered = _answer(lexical_model, damaged)
    assert "does not match its digest: it was edited or damaged; it is rebuilt" in caplog.text
    expected = _answer(lexical_model, bank)
    assert torch.equal(answered[0], expected[0]) and answered[1] == expected[1]
    assert all(torch.equal(damaged.derived("lexical")[0][k], built[k]) for k in built)  # rebuilt as it was
    if folder:
        MemoryBank.load(path, verify=True)  # the rebuilt index replaced the damaged one


def test_a_kept_key_index_that_was_damaged_is_rebuilt_not_read(tokenizer, essay_text, tmp_path, caplog):
    config = KV.replace(gate=GateConfig("attention", layers=(1, 2)), reading=ReadingConfig())
    model = tiny_wrapper("llama", tokenizer, config)
    bank = model.compress_stream([essay_text[:3000]], tmp_path / "bank")  # the key index is built and kept
    kept_in = tmp_path / "bank" / "derived-keys-1-2.safetensors"
    expected = model.reasoner.gate.index(bank, model.model).keys
    data = bytearray(kept_in.read_bytes())
    data[-2] ^= 0x40  # one flipped bit in the packed keys
    kept_in.write_bytes(bytes(data))
    damaged = MemoryBank.load(tmp_path / "bank")
    with pytest.raises(BankMismatchError, match=r"derived-keys-1-2\.safetensors does not match its digest"):
        damaged.verify()
    with caplog.at_level("WARNING"):
        assert torch.equal(model.reasoner.gate.index(damaged, model.model).keys, expected)
    assert "derived-keys-1-2.safetensors does not match its digest" in caplog.text
