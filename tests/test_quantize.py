"""Quantized blocks: packing, KIVI-layout groups, banks that store them, and a block read back as its text."""

import pytest
import torch
from transformers import DynamicCache

from compressmem import (
    BankMismatchError,
    ChunkingConfig,
    CompressionConfig,
    ConfigError,
    MemoryBank,
    MemoryConfig,
    ReadingConfig,
)
from compressmem.config import DEFAULT_GROUP
from compressmem.quantize import CHANNELS, TOKENS, Quantized, dense, fake_quantize, pack, quantize, unpack

from .conftest import tiny_wrapper

PROMPT = "\n\nQuestion: what did the text say?"


def _config(bits: int, method: str = "none", **compression) -> MemoryConfig:
    return MemoryConfig(chunking=ChunkingConfig(96), compression=CompressionConfig(method, bits=bits, **compression),
                        gate=None, reading=ReadingConfig("compressed"))


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_packing_round_trips_every_code(bits):
    codes = torch.randint(0, 1 << bits, (3, 5, 32), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.shape == (3, 5, 32 * bits // 8) and torch.equal(unpack(packed, bits), codes)


@pytest.mark.parametrize("axis", [TOKENS, CHANNELS], ids=["keys-per-channel", "values-per-token"])
def test_groups_run_along_their_axis_and_bound_the_error_by_half_a_step(axis):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 45, 64) * torch.linspace(0.1, 8, 64)  # channels of very different scales
    for bits in (8, 4, 2):
        q = quantize(x, bits, 16, axis)
        assert q.shape == x.shape and q.data.dtype == torch.uint8 and q.scales.dtype == torch.float16
        groups = (-(-45 // 16), 64) if axis == TOKENS else (45, 4)
        assert q.scales.shape == (2, 3, *groups) and q.zeros.shape == q.scales.shape
        step = q.scales.float().repeat_interleave(16, dim=axis).narrow(axis, 0, x.shape[axis])
        error = (q.dequantize() - x).abs()
        assert bool((error <= step / 2 + 1e-3 * x.abs() + 1e-3).all())  # float16 scales add a hair
        assert q.nbytes == x.numel() * bits // 8 + 2 * 2 * q.scales.numel()


def test_keys_per_channel_keep_an_outlier_channel_from_swamping_the_others():
    """KIVI's reason for grouping keys along tokens: one large channel costs only its own precision."""
    torch.manual_seed(1)
    keys = torch.randn(1, 1, 64, 32)
    keys[..., 5] *= 50
    per_channel = (quantize(keys, 4, 32, TOKENS).dequantize() - keys)[..., :5].abs().mean()
    per_token = (quantize(keys, 4, 32, CHANNELS).dequantize() - keys)[..., :5].abs().mean()
    assert per_channel < per_token / 4


def test_fake_quantize_reads_as_the_stored_block_and_passes_gradients():
    x = torch.randn(2, 2, 40, 16, requires_grad=True)
    read = fake_quantize(x, 4, 8, TOKENS)
    torch.testing.assert_close(read, quantize(x, 4, 8, TOKENS).dequantize(), rtol=0, atol=1e-6)
    read.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("bits, tolerance", [(8, 2e-3), (4, 2e-2), (2, 1e-1)])
def test_a_quantized_uncompressed_block_reads_within_tolerance_of_its_text(tokenizer, essay_text, bits, tolerance):
    """A block read as a prefix against its tokens, stated as a tolerance: max |logit difference| after the block against after the raw
    chunk (the tiny model's logits are within ±1), growing as bits shrink."""
    wrapper = tiny_wrapper("llama", tokenizer, _config(bits))
    bank = wrapper.compress(essay_text[:3000])
    assert isinstance(bank.blocks[0].keys, Quantized) and bank.blocks[0].keys.bits == bits
    prompt = wrapper.prompts.encode(PROMPT)
    worst = 0.0
    for index in (0, len(bank) - 1):
        block = bank.blocks[index]
        keys = torch.cat([bank.prefix_keys, dense(block.keys)], 2)
        values = torch.cat([bank.prefix_values, dense(block.values)], 2)
        cache = DynamicCache([(keys[i][None], values[i][None]) for i in range(keys.shape[0])])
        start = bank.prefix_ids.numel() + block.num_tokens
        with torch.no_grad():
            read = wrapper.model(input_ids=prompt[None], cache=cache,
                                 position_ids=torch.arange(start, start + prompt.numel())[None]).logits[0]
            raw = wrapper.model(input_ids=torch.cat([bank.prefix_ids, block.token_ids, prompt])[None]).logits[0]
        worst = max(worst, (read - raw[-prompt.numel():]).abs().max().item())
    assert 0 < worst < tolerance


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_a_quantized_bank_is_stored_packed_counts_its_scales_and_reads_back_the_same(tokenizer, essay_text, tmp_path,
                                                                                      folder):
    wrapper = tiny_wrapper("llama", tokenizer, _config(4, "select", ratio=2))
    bank = wrapper.compress(essay_text[:2000])
    plain = tiny_wrapper("llama", tokenizer, _config(16, "select", ratio=2)).compress(essay_text[:2000])
    kv = lambda b: sum(x.nbytes if isinstance(x, Quantized) else x.numel() * x.element_size()  # noqa: E731
                       for block in b.blocks for x in (block.keys, block.values))
    assert kv(bank) < 0.3 * kv(plain)  # 4 bits against 32 (this tiny model computes in float32)
    assert bank.nbytes == plain.nbytes - kv(plain) + kv(bank)  # the same blocks otherwise; scales counted
    path = tmp_path / ("bank" if folder else "bank.safetensors")
    bank.save(path, folder=folder)
    loaded = MemoryBank.load(path)
    assert loaded.provenance.compression == CompressionConfig("select", ratio=2, bits=4, group=DEFAULT_GROUP)
    assert loaded.nbytes == bank.nbytes
    for ours, theirs in zip(loaded.blocks, bank.blocks):
        for field in ("data", "scales", "zeros"):
            assert torch.equal(getattr(ours.keys, field), getattr(theirs.keys, field))
            assert torch.equal(getattr(ours.values, field), getattr(theirs.values, field))
        assert (ours.keys.axis, ours.values.axis) == (TOKENS, CHANNELS)
    prompt = wrapper.prompt_ids("What is the essay about?")
    assert torch.equal(wrapper.generate(prompt, bank=loaded, max_new_tokens=4, do_sample=False),
                       wrapper.generate(prompt, bank=bank, max_new_tokens=4, do_sample=False))


def test_a_bank_of_other_bits_is_refused_naming_both(tokenizer, essay_text):
    bank = tiny_wrapper("llama", tokenizer, _config(4)).compress(essay_text[:800])
    reader = tiny_wrapper("llama", tokenizer, _config(8))
    with pytest.raises(BankMismatchError, match=f"4-bit in groups of {DEFAULT_GROUP}.*needs .*8-bit in groups of"):
        reader.generate(reader.prompt_ids("Why?"), bank=bank, max_new_tokens=2)


def test_bits_and_groups_are_checked():
    with pytest.raises(ConfigError, match="compression.bits must be one of"):
        CompressionConfig(bits=3)
    with pytest.raises(ConfigError, match="group sizes the groups of quantized KV.*bits=16"):
        CompressionConfig(group=64)
    with pytest.raises(ConfigError, match="compression.group must be a positive integer"):
        CompressionConfig(bits=4, group=0)
    assert CompressionConfig(bits=4).group == DEFAULT_GROUP and CompressionConfig().group is None


def test_the_gate_index_of_a_quantized_bank_is_packed_kept_and_scores_close_to_the_float_ones(tokenizer, essay_text,
                                                                                                tmp_path):
    from compressmem import GateConfig

    def keyed(bits):
        return MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("select", bits=bits),
                            gate=GateConfig("attention", top_k=2, layers=(1, 2)))

    packed_model, float_model = tiny_wrapper("llama", tokenizer, keyed(4)), tiny_wrapper("llama", tokenizer, keyed(16))
    bank = packed_model.compress(essay_text[:3000])
    gate = packed_model.reasoner.gate
    index = gate.index(bank, packed_model.model)
    assert isinstance(index.keys, Quantized) and index.keys.bits == 4
    prompts = ["What is the essay about?", "Who wrote it?"]
    packed = gate.score(packed_model.model, prompts, index)
    plain = float_model.reasoner.gate.score(float_model.model, prompts,
                                            float_model.reasoner.gate.index(float_model.compress(essay_text[:3000]),
                                                                            float_model.model))
    assert (packed - plain).abs().max() < 0.1 * plain.max()  # the same blocks, read at 4 bits
    bank.save(tmp_path / "bank", folder=True)
    assert (tmp_path / "bank" / "derived-keys-1-2.safetensors").is_file()
    reopened = MemoryBank.load(tmp_path / "bank")
    torch.testing.assert_close(gate.score(packed_model.model, prompts, gate.index(reopened, packed_model.model)),
                               packed)
