import json

import pytest
import torch
from safetensors import safe_open

from compressmem import (
    BankMismatchError,
    ChunkingConfig,
    CompressionConfig,
    GateConfig,
    MemoryBank,
    MemoryConfig,
    NotesConfig,
    PromptConfig,
    ReadingConfig,
)

from .conftest import tiny_wrapper

CHUNKS = ChunkingConfig(64)
COMPRESSED = MemoryConfig(chunking=CHUNKS, compression=CompressionConfig("select", ratio=4),
                          reading=ReadingConfig("compressed"))


def test_bank_reports_its_size_from_the_index_and_round_trips_as_a_file_and_a_folder(tokenizer, essay_text, tmp_path):
    wrapper = tiny_wrapper("llama", tokenizer, COMPRESSED)
    text = essay_text[:2500]
    bank = wrapper.compress(text)
    num_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(bank) == -(-num_tokens // 64) and bank.num_tokens == num_tokens
    assert bank.blocks[0].keys.shape[-2] == 16
    assert bank.blocks[0].keys.shape[0] == wrapper.model.config.num_hidden_layers
    kv_bytes = sum(b.keys.nbytes + b.values.nbytes + b.positions.nbytes for b in bank.blocks)
    prefix_bytes = bank.prefix_keys.nbytes + bank.prefix_values.nbytes + 4 * bank.prefix_ids.numel()
    assert bank.nbytes == kv_bytes + prefix_bytes + 4 * num_tokens

    for path, folder in ((tmp_path / "bank.safetensors", False), (tmp_path / "bank", True)):
        bank.save(path, folder=folder, shard_blocks=4)
        loaded = MemoryBank.load(path)
        assert loaded.provenance == bank.provenance and len(loaded) == len(bank)
        assert loaded.nbytes == bank.nbytes and loaded.num_tokens == bank.num_tokens  # from the index alone
        for before, after in zip(bank.blocks, loaded.blocks):
            assert torch.equal(before.token_ids, after.token_ids) and torch.equal(before.keys, after.keys)
            assert torch.equal(before.values, after.values) and torch.equal(before.positions, after.positions)
            assert before.char_span == after.char_span
    assert len(list((tmp_path / "bank").glob("blocks-*.safetensors"))) == -(-len(bank) // 4)
    with safe_open(str(tmp_path / "bank.safetensors"), framework="pt") as handle:  # safetensors, never pickle
        assert json.loads(handle.metadata()["index"])["provenance"]["compression"]["method"] == "select"


def test_a_gate_only_bank_keeps_just_the_gate_layers_keys(tokenizer, essay_text):
    config = MemoryConfig(chunking=CHUNKS, compression=CompressionConfig("select"),
                          gate=GateConfig("attention", layers=(2,)))
    bank = tiny_wrapper("llama", tokenizer, config).compress(essay_text[:1000])
    assert bank.layers == (2,) and bank.blocks[0].keys.shape[0] == 1
    assert bank.blocks[0].values is None and not bank.has_values


def test_a_bank_without_a_compressor_holds_only_token_ids_and_records_none(tokenizer, essay_text):
    for config in (MemoryConfig.memagent(64), MemoryConfig(chunking=CHUNKS)):
        bank = tiny_wrapper("llama", tokenizer, config).compress(essay_text[:1000])
        assert all(b.keys is None for b in bank.blocks) and bank.provenance.compression is None
        assert bank.nbytes == 4 * (bank.num_tokens + bank.prefix_ids.numel())


def test_a_bank_from_another_model_is_refused_naming_both(tokenizer, essay_text):
    bank = tiny_wrapper("llama", tokenizer, seed=0).compress(essay_text[:800])
    other = tiny_wrapper("llama", tokenizer, seed=1)
    ids = tokenizer("Question?", return_tensors="pt")["input_ids"]
    with pytest.raises(BankMismatchError, match="tiny-llama-0.*tiny-llama-1"):
        other.generate(ids, bank=bank, max_new_tokens=2)


def test_a_gate_only_bank_cannot_be_read_compressed(tokenizer, essay_text):
    keys_only = COMPRESSED.replace(reading=ReadingConfig(), gate=GateConfig("attention"))
    bank = tiny_wrapper("llama", tokenizer, keys_only).compress(essay_text[:800])
    reader = tiny_wrapper("llama", tokenizer, COMPRESSED)
    ids = tokenizer("Question?", return_tensors="pt")["input_ids"]
    with pytest.raises(BankMismatchError, match="reading mode 'compressed' needs"):
        reader.generate(ids, bank=bank, max_new_tokens=2)


@pytest.mark.parametrize("built, read", [
    (CompressionConfig("select", ratio=2), CompressionConfig("select", ratio=4)),
    (CompressionConfig("select", score="observed"), CompressionConfig("select")),
    (CompressionConfig("none"), CompressionConfig("select")),
], ids=["ratio", "score", "method"])
def test_a_bank_built_with_other_compression_is_refused_naming_both(tokenizer, essay_text, built, read):
    bank = tiny_wrapper("llama", tokenizer, COMPRESSED.replace(compression=built)).compress(essay_text[:800])
    reader = tiny_wrapper("llama", tokenizer, COMPRESSED.replace(compression=read))
    with pytest.raises(BankMismatchError, match=f"built with .*{built.method}.*needs .*{read.method}"):
        reader.generate(reader.prompt_ids("Question?"), bank=bank, max_new_tokens=2)


def test_a_bank_of_other_chunks_is_refused_when_its_kv_is_read_and_read_when_only_its_text_is(tokenizer, essay_text):
    bank = tiny_wrapper("llama", tokenizer, COMPRESSED).compress(essay_text[:800])
    reader = tiny_wrapper("llama", tokenizer, COMPRESSED.replace(chunking=ChunkingConfig(32)))
    with pytest.raises(BankMismatchError, match="chunks of 64 tokens.*needs chunks of 32 tokens"):
        reader.generate(reader.prompt_ids("Question?"), bank=bank, max_new_tokens=2)
    raw = tiny_wrapper("llama", tokenizer, MemoryConfig(chunking=ChunkingConfig(32), notes=NotesConfig(note_tokens=2)))
    trace = raw.generate(raw.prompt_ids("Question?"), bank=bank, max_new_tokens=2, return_dict_in_generate=True).trace
    assert trace[0].num_blocks == len(bank)  # lexical gate + raw reading: the bank's token ids are all it needs


def test_loading_something_that_is_not_a_bank_fails_clearly(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(BankMismatchError, match="not a compressmem memory bank"):
        MemoryBank.load(path)
    with pytest.raises(BankMismatchError, match="bank.json is missing"):
        MemoryBank.load(tmp_path)


def test_to_moves_every_tensor_of_an_in_memory_bank_and_every_block_read_from_disk(tokenizer, essay_text, tmp_path):
    bank = tiny_wrapper("llama", tokenizer, COMPRESSED).compress(essay_text[:900], bank_device="cpu")
    moved = bank.to("meta")  # a device of its own on any machine: nothing reaches it unless moved there
    block = moved.blocks[0]
    assert {t.device.type for t in (block.keys, block.values, block.positions, moved.prefix_keys)} == {"meta"}
    assert bank.blocks[0].keys.device.type == "cpu"  # the original stays where it was
    bank.save(tmp_path / "bank", folder=True)
    on_disk = MemoryBank.load(tmp_path / "bank", device="meta")
    assert on_disk.blocks[1].keys.device.type == "meta" and on_disk.blocks[1].token_ids.device.type == "cpu"


def test_a_bank_made_in_float32_is_read_by_a_bfloat16_model(tokenizer, essay_text):
    config = COMPRESSED.replace(compression=CompressionConfig("select", ratio=2), notes=NotesConfig(note_tokens=4),
                                prompts=PromptConfig(not_found=None))
    wrapper = tiny_wrapper("llama", tokenizer, config)
    bank = wrapper.compress(essay_text[:900])
    wrapper.model.to(torch.bfloat16)
    ids = tokenizer("Question?", return_tensors="pt")["input_ids"]
    out = wrapper.generate(ids, bank=bank, max_new_tokens=2, min_new_tokens=2)
    assert out.shape == (1, ids.shape[1] + 2) and bank.blocks[0].keys.dtype == torch.float32


def test_a_damaged_bank_is_refused_not_read_wrong(tokenizer, essay_text, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    wrapper = tiny_wrapper("llama", tokenizer, MemoryConfig(chunking=CHUNKS))
    bank = wrapper.compress(essay_text[:2000])
    bank.save(tmp_path / "folder", folder=True, shard_blocks=2)
    shards = sorted((tmp_path / "folder").glob("blocks-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(BankMismatchError, match="lacks 1 of its .* shards.*incomplete"):
        MemoryBank.load(tmp_path / "folder")

    bank.save(tmp_path / "bank.safetensors")
    with safe_open(str(tmp_path / "bank.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(tmp_path / "bank.safetensors"))
    name = next(k for k in tensors if k.endswith("token_ids"))
    tensors[name] = tensors[name].float()  # the header edited: F32 ids where I32 were written
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=metadata)
    edited = MemoryBank.load(tmp_path / "edited.safetensors")
    block = int(name.split(".")[-2])
    with pytest.raises(BankMismatchError, match=f"Block {block}'s token_ids in .*edited.safetensors are not what was"):
        edited.token_ids(block)
