"""The base fingerprint sees every layer's weights: a fine-tune with every layer changed and the embeddings untouched
reads no bank of its base, while a bank with the older fingerprint (embeddings only) still loads and is compared the
old way, and the same model in another dtype or with an adapter attached keeps its fingerprint."""

from pathlib import Path

import pytest
import torch

from compressmem import (
    BankMismatchError,
    ChunkingConfig,
    CompressedMemoryModel,
    CompressionConfig,
    MemoryBank,
    MemoryConfig,
    ReadingConfig,
)
from compressmem.hf.fingerprint import FINGERPRINT_VERSION, BaseFingerprint

from .conftest import tiny_model, tiny_wrapper

KV = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("select", ratio=4),
                  reading=ReadingConfig("compressed"))
FORMAT_3 = Path(__file__).parent / "data" / "format-3"
TEXT = "The vault code is 4719283, said the keeper. Bakers rise before dawn to knead bread. " * 12


def _fine_tune(tokenizer):
    """The tiny base with every layer's weights changed (as a full fine-tune changes them) and its embeddings kept."""
    model = tiny_model("llama", tokenizer, seed=0)
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        for weight in model.parameters():
            if weight is not embeddings:
                weight.add_(0.02 * torch.randn_like(weight))
    return CompressedMemoryModel(model, tokenizer, memory_config=KV, base_name="tiny-llama-0", show_progress=False)


def test_a_fine_tune_of_every_layer_with_the_embeddings_kept_reads_no_bank_of_its_base(tokenizer, tmp_path):
    base = tiny_wrapper("llama", tokenizer, KV)
    tuned = _fine_tune(tokenizer)
    assert tuned.fingerprint.digest == base.fingerprint.digest  # what release 0.4 compared: the same
    assert tuned.fingerprint != base.fingerprint and tuned.fingerprint.version == FINGERPRINT_VERSION
    bank = base.compress(TEXT)
    bank.save(tmp_path / "bank.safetensors")
    for read in (bank, MemoryBank.load(tmp_path / "bank.safetensors")):
        with pytest.raises(BankMismatchError, match="same architecture, vocabulary and embeddings, but other layer "
                                                    "weights .*Rebuild the bank"):
            tuned.answer("What is the vault code?", bank=read, max_new_tokens=4)
    MemoryBank.load(tmp_path / "bank.safetensors").check(base.bank_needs())  # its own model reads it


def test_the_same_model_in_bfloat16_keeps_its_fingerprint(tokenizer):
    base = tiny_wrapper("llama", tokenizer, KV)
    assert tiny_wrapper("llama", tokenizer, KV).to(torch.bfloat16).fingerprint.layers == base.fingerprint.layers


def test_an_adapter_attached_to_the_model_leaves_its_fingerprint(tokenizer):
    from peft import LoraConfig, inject_adapter_in_model

    base = tiny_wrapper("llama", tokenizer, KV)
    model = tiny_model("llama", tokenizer, seed=0)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["k_proj", "v_proj"]), model)
    assert any("lora_" in name for name, _ in model.named_parameters())
    adapted = CompressedMemoryModel(model, tokenizer, memory_config=KV, base_name="tiny-llama-0", show_progress=False)
    assert adapted.fingerprint.layers == base.fingerprint.layers


def test_a_bank_with_the_older_fingerprint_still_loads_and_is_compared_the_old_way(tokenizer, tmp_path):
    old = MemoryBank.load(FORMAT_3 / "compressed.safetensors", verify=True)
    assert old.fingerprint.version == 1 and old.fingerprint.layers is None
    assert old.fingerprint.to_dict() == {"name": "tiny-llama-0", "digest": old.fingerprint.digest}  # as 0.4 wrote it
    base = tiny_wrapper("llama", tokenizer, KV)
    old.check(base.bank_needs())  # embeddings and architecture: the same model
    assert old.fingerprint == base.fingerprint
    # a format-1 fingerprint written again (a bank saved anew from it) keeps its format, and still loads
    old.save(tmp_path / "again.safetensors")
    again = MemoryBank.load(tmp_path / "again.safetensors", verify=True)
    assert again.fingerprint.version == 1 and again.fingerprint.to_dict() == old.fingerprint.to_dict()
    other = tiny_wrapper("llama", tokenizer, KV, seed=1)  # other embeddings: refused as before
    with pytest.raises(BankMismatchError, match="built with base model 'tiny-llama-0'"):
        old.check(other.bank_needs())


def test_a_fingerprint_round_trips_through_its_dict():
    new = BaseFingerprint("m", "a" * 64, "b" * 64, 2)
    assert BaseFingerprint.from_dict(new.to_dict()) == new and BaseFingerprint.from_dict(new.to_dict()).layers == "b" * 64
    assert BaseFingerprint.from_dict({"name": "m", "digest": "a" * 64}).version == 1
    assert new != BaseFingerprint("m", "a" * 64, "c" * 64, 2) and new == BaseFingerprint("m", "a" * 64)
