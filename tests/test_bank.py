import pytest
import torch

from compressmem import BankMismatchError, MemoryBank, MemoryConfig

from .conftest import tiny_wrapper


def test_bank_reports_its_size_and_round_trips_through_safetensors(tokenizer, essay_text, tmp_path):
    config = MemoryConfig(chunk_size=64, ratio=4, read="compressed", gate_layers=(1, 2))
    wrapper = tiny_wrapper("llama", tokenizer, config)
    text = essay_text[:2500]
    bank = wrapper.compress(text)
    num_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(bank) == -(-num_tokens // 64) and bank.num_tokens == num_tokens
    kept = bank.blocks[0].keys.shape[-2]
    assert kept == 16 and bank.blocks[0].keys.shape[0] == wrapper.model.config.num_hidden_layers
    kv_bytes = sum(b.keys.nbytes + b.values.nbytes + b.positions.nbytes for b in bank.blocks)
    prefix_bytes = bank.prefix_keys.nbytes + bank.prefix_values.nbytes + 4 * bank.prefix_ids.numel()
    assert bank.nbytes == kv_bytes + prefix_bytes + 4 * num_tokens

    path = tmp_path / "bank.safetensors"
    bank.save(path)
    assert path.read_bytes()[:8] != b"\x80\x04\x95"[:8]  # not a pickle
    loaded = MemoryBank.load(path)
    assert loaded.fingerprint == bank.fingerprint and loaded.layers == bank.layers and len(loaded) == len(bank)
    for before, after in zip(bank.blocks, loaded.blocks):
        assert torch.equal(before.token_ids, after.token_ids) and torch.equal(before.keys, after.keys)
        assert torch.equal(before.values, after.values) and torch.equal(before.positions, after.positions)
        assert before.char_span == after.char_span
    assert loaded.nbytes == bank.nbytes


def test_gate_only_bank_keeps_just_the_gate_layers_keys(tokenizer, essay_text):
    wrapper = tiny_wrapper("llama", tokenizer, MemoryConfig(chunk_size=64, read="raw", gate="attention",
                                                                gate_layers=(2,)))
    bank = wrapper.compress(essay_text[:1000])
    assert bank.layers == (2,) and bank.blocks[0].keys.shape[0] == 1
    assert bank.blocks[0].values is None and not bank.has_values


def test_memagent_bank_holds_only_token_ids(tokenizer, essay_text):
    wrapper = tiny_wrapper("llama", tokenizer, MemoryConfig.memagent(chunk_size=64))
    bank = wrapper.compress(essay_text[:1000])
    assert all(b.keys is None for b in bank.blocks)
    assert bank.nbytes == 4 * (bank.num_tokens + bank.prefix_ids.numel())


def test_a_bank_from_another_model_is_refused_naming_both(tokenizer, essay_text):
    first = tiny_wrapper("llama", tokenizer, seed=0)
    other = tiny_wrapper("llama", tokenizer, seed=1)
    bank = first.compress(essay_text[:800])
    ids = tokenizer("Question?", return_tensors="pt")["input_ids"]
    with pytest.raises(BankMismatchError, match="tiny-llama-0.*tiny-llama-1"):
        other.generate(ids, memory=bank, max_new_tokens=2)


def test_a_gate_only_bank_cannot_be_read_compressed(tokenizer, essay_text):
    bank = tiny_wrapper("llama", tokenizer, MemoryConfig(chunk_size=64, read="raw")).compress(essay_text[:800])
    reader = tiny_wrapper("llama", tokenizer, MemoryConfig(chunk_size=64, read="compressed"))
    ids = tokenizer("Question?", return_tensors="pt")["input_ids"]
    with pytest.raises(BankMismatchError, match="read='compressed'"):
        reader.generate(ids, memory=bank, max_new_tokens=2)


def test_loading_something_that_is_not_a_bank_fails_clearly(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(BankMismatchError, match="not a compressmem memory bank"):
        MemoryBank.load(path)


def test_a_bank_moves_between_devices_and_dtypes_and_still_reads(tokenizer, essay_text):
    import torch

    config = MemoryConfig(chunk_size=64, ratio=2, read="compressed", gate_layers=(1, 2), note_tokens=4)
    wrapper = tiny_wrapper("llama", tokenizer, config)
    bank = wrapper.compress(essay_text[:900], bank_device="cpu")
    assert bank.blocks[0].keys.device.type == "cpu"
    wrapper.model.to(torch.bfloat16)
    ids = tokenizer("Question?", return_tensors="pt")["input_ids"]
    out = wrapper.generate(ids, memory=bank.to("cpu"), max_new_tokens=2, min_new_tokens=2)
    assert out.shape == (1, ids.shape[1] + 2)
