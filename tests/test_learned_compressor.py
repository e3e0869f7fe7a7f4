"""The learned compressor: memory tokens through a LoRA adapter, blocks the reasoner reads, gradients, checkpoints."""

import math

import pytest
import torch

from compressmem import (
    ChunkingConfig,
    CompressedMemoryModel,
    CompressionConfig,
    ConfigError,
    MemoryConfig,
    PromptConfig,
    ReadingConfig,
)
from compressmem.compressors import LearnedCompressor
from compressmem.compressors.learned import memory_positions
from compressmem.hf.adapters import ReasonerAdapter

from .conftest import tiny_model

CONFIG = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("learned", ratio=4), gate=None,
                      reading=ReadingConfig("compressed", until="all"), prompts=PromptConfig(not_found=None))
RATIO = CONFIG.compression.ratio
CONTEXT = "The lighthouse keeper wrote the vault code 4719283 in the logbook before the storm. " * 12


def _wrapper(tokenizer, seed=0):
    model = tiny_model("llama", tokenizer, seed)
    compressor = LearnedCompressor.initialise(model, RATIO, CONFIG.chunking.size, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained-looking adapter: nonzero B, so the adapter changes the KV
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.05, generator=generator)
    return CompressedMemoryModel(model, tokenizer, memory_config=CONFIG, base_name="tiny", show_progress=False,
                                 compressor=compressor)


def test_memory_positions_end_each_group_within_the_chunk():
    assert memory_positions(8, 2, 4).tolist() == [3, 7]
    assert memory_positions(10, 3, 4).tolist() == [3, 7, 9]
    assert memory_positions(5, 2, 2.5).tolist() == [2, 4]


def test_blocks_are_memory_tokens_and_the_base_model_is_untouched(tokenizer):
    wrapper = _wrapper(tokenizer)
    ids = torch.randint(0, 1000, (1, 40))
    before = wrapper.model(ids).logits
    bank = wrapper.compress(CONTEXT)
    torch.testing.assert_close(wrapper.model(ids).logits, before, rtol=0, atol=0)  # adapter off again
    prefix = bank.prefix_ids.numel()
    for block in bank.blocks:
        kept = math.ceil(block.num_tokens / RATIO)
        assert block.keys.shape[2] == kept and block.values.shape[2] == kept
        expected = memory_positions(block.num_tokens, kept, RATIO) + prefix
        assert (block.positions == expected.to(torch.int32)).all()
    plain = CompressedMemoryModel(wrapper.model, tokenizer,
                                  memory_config=CONFIG.replace(compression=CompressionConfig("none")),
                                  base_name="tiny", show_progress=False)
    raw_keys = plain.compress(CONTEXT).blocks[0].keys
    assert not torch.allclose(bank.blocks[0].keys, raw_keys[:, :, :bank.blocks[0].keys.shape[2]])
    out = wrapper.generate(wrapper.prompt_ids("What is the vault code?"), bank=bank, max_new_tokens=4,
                           return_dict_in_generate=True)
    assert out.trace[0].blocks_read == list(range(len(bank)))


def test_gradients_reach_the_compressor_and_not_the_base(tokenizer):
    wrapper = _wrapper(tokenizer)
    model, compressor = wrapper.model, wrapper.compressor
    for name, weight in model.named_parameters():
        weight.requires_grad_("lora_" in name)
    compressor.memory_embeddings.requires_grad_(True)
    chunk = torch.randint(0, 1000, (2, 64))
    out = compressor.forward_blocks(model, wrapper.prompts.section_prefix_ids(), chunk, (0, 1, 2, 3), True)
    (out.keys.square().mean() + out.values.square().mean()).backward()
    assert compressor.memory_embeddings.grad.abs().sum() > 0
    lora = {n: w for n, w in model.named_parameters() if "lora_" in n}
    assert any(w.grad is not None and w.grad.abs().sum() > 0 for w in lora.values())
    assert all(w.grad is None for n, w in model.named_parameters() if "lora_" not in n)


def test_checkpoint_round_trip_gives_identical_blocks_and_ids(tokenizer, tmp_path):
    base = tmp_path / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    loaded_base = CompressedMemoryModel.from_pretrained(str(base), show_progress=False)
    compressor = LearnedCompressor.initialise(loaded_base.model, RATIO, CONFIG.chunking.size, seed=3)
    reasoner = ReasonerAdapter.initialise(loaded_base.model, rank=4, seed=4)
    with torch.no_grad():
        for name, weight in loaded_base.model.named_parameters():
            if "lora_B" in name:
                weight.uniform_(-0.05, 0.05)
    wrapper = CompressedMemoryModel(loaded_base.model, tokenizer, memory_config=CONFIG, base_name=str(base),
                                    show_progress=False, compressor=compressor,
                                    reasoner_adapter=reasoner)
    wrapper.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "compressor" / "adapter_config.json").is_file()
    assert (tmp_path / "ckpt" / "reasoner" / "adapter_config.json").is_file()
    assert not list((tmp_path / "ckpt").rglob("*.bin")) and not list((tmp_path / "ckpt").rglob("model.safetensors"))

    reloaded = CompressedMemoryModel.from_pretrained(str(base), checkpoint=tmp_path / "ckpt", show_progress=False)
    assert reloaded.reasoner_adapter is not None and reloaded.reasoner_adapter.lora_config.r == 4
    first, second = wrapper.compress(CONTEXT), reloaded.compress(CONTEXT)
    for a, b in zip(first.blocks, second.blocks):
        torch.testing.assert_close(a.keys, b.keys, rtol=0, atol=0)
        torch.testing.assert_close(a.values, b.values, rtol=0, atol=0)
    prompt = wrapper.prompt_ids("What is the vault code?")
    assert torch.equal(wrapper.generate(prompt, bank=first, max_new_tokens=6),
                       reloaded.generate(prompt, bank=second, max_new_tokens=6))


def test_learned_needs_its_weights_and_its_ratio(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="needs trained weights"):
        CompressedMemoryModel(tiny_model("llama", tokenizer), tokenizer, memory_config=CONFIG)
    wrapper = _wrapper(tokenizer)
    wrapper.compressor.save(wrapper.model, tmp_path / "compressor")
    with pytest.raises(ValueError, match="trained at ratio 4.0.*ratio 8"):
        LearnedCompressor.load(tiny_model("llama", tokenizer), tmp_path / "compressor", 8.0)
    with pytest.raises(ConfigError, match="learned compressor was given.*compression None"):
        CompressedMemoryModel(wrapper.model, tokenizer, memory_config=MemoryConfig(), compressor=wrapper.compressor)
