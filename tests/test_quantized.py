"""Bases quantized by bitsandbytes (4-bit NF4, 8-bit LLM.int8): compression, reading, adapters, training.

Every test compares against something independent of the code under test: the same tiny model in
float32, or the quantized base run directly on the raw tokens. Skipped, with the reason, where
bitsandbytes cannot run its layers on this machine's CPU.
"""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, DynamicCache

from compressmem import (
    ChunkingConfig,
    CompressedMemoryModel,
    CompressionConfig,
    GateConfig,
    MemoryConfig,
    NotesConfig,
    PromptConfig,
    ReadingConfig,
)
from compressmem.compressors import LearnedCompressor
from compressmem.gate import GateHead
from compressmem.hf.adapters import ReasonerAdapter
from compressmem.reader import cut_at_eos, pad_token_id
from compressmem.training.pretrain import reconstruction_loss, start_or_resume, trainable_weights

from .conftest import tiny_model

bnb = pytest.importorskip("bitsandbytes", reason="needs bitsandbytes: pip install 'compressmem[quant]'")

QUANTIZATION = {
    4: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
    8: BitsAndBytesConfig(load_in_8bit=True),
}
QUANTIZED_LAYER = {4: bnb.nn.Linear4bit, 8: bnb.nn.Linear8bitLt}
# Relative error ||K_quantized - K|| / ||K|| allowed between a block made on the quantized base and on
# the float32 one. NF4 keeps each weight matrix to about 9% (its 16-level grid), and four layers of
# that put the tiny model's blocks within about 13%; LLM.int8 keeps them within about 1%. A block of
# another chunk is about 130% off, and a learned block made without the compressor's adapter about
# 85%, so both bounds still tell a right block from a wrong one.
TOLERANCE = {4: 0.35, 8: 0.05}
CONTEXT = ("The lighthouse keeper wrote the vault code 4719283 in the logbook before the storm. "
           "Gulls circled the harbour while the ferry waited for the tide to turn. ") * 8
QUESTION = "What is the vault code?"
PLAIN = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("none"), gate=None,
                     reading=ReadingConfig("compressed", max_steps=3, until="all"), notes=NotesConfig(note_tokens=12),
                     prompts=PromptConfig(not_found=None))
LEARNED = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("learned", ratio=4),
                       reading=ReadingConfig("compressed"), gate=GateConfig("head"), notes=NotesConfig(note_tokens=6))
HEAD_LAYERS = (1, 2)


@functools.cache
def _cpu_failure(bits: int) -> str | None:
    """Why bitsandbytes cannot run a `bits`-bit layer forward and backward on this CPU, or None if it can."""
    dense = torch.nn.Linear(64, 64, bias=False)
    if bits == 4:
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
    else:
        layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(dense.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    inputs = torch.randn(4, 64, requires_grad=True)
    try:
        layer.to("cpu")(inputs).sum().backward()
    except Exception as error:  # any failure of the library itself means: not supported here
        return (f"bitsandbytes {bnb.__version__} cannot run {bits}-bit layers on the CPU: "
                f"{type(error).__name__}: {error}")
    return None


@pytest.fixture(params=[4, 8], ids=["4bit", "8bit"])
def bits(request) -> int:
    reason = _cpu_failure(request.param)
    if reason is not None:
        pytest.skip(reason)
    return request.param


@pytest.fixture(scope="module")
def base_folder(tokenizer, tmp_path_factory):
    """A tiny random llama saved as a model folder, as a user's base would be."""
    folder = tmp_path_factory.mktemp("tiny-base")
    tiny_model("llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def learned_checkpoint(base_folder, tokenizer, tmp_path_factory):
    """A checkpoint made on the float32 base: learned compressor, reasoner adapter and gate head, all nonzero."""
    model = AutoModelForCausalLM.from_pretrained(base_folder).eval()
    compressor = LearnedCompressor.initialise(model, LEARNED.compression.ratio, LEARNED.chunking.size, seed=0)
    adapter = ReasonerAdapter.initialise(model, seed=1)
    head = GateHead(HEAD_LAYERS, model.config.num_attention_heads)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking weights: nonzero LoRA B, so both adapters change what they touch
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.05, generator=generator)
        head.weight.normal_(0, 1, generator=generator)
    wrapper = CompressedMemoryModel(model, tokenizer, memory_config=LEARNED, base_name=base_folder, show_progress=False,
                                    gate_head=head, compressor=compressor, reasoner_adapter=adapter)
    folder = tmp_path_factory.mktemp("learned-ckpt")
    wrapper.save_pretrained(folder)
    return folder, wrapper


def _load(base_folder, bits, **kwargs) -> CompressedMemoryModel:
    wrapper = CompressedMemoryModel.from_pretrained(base_folder, show_progress=False,
                                                    quantization_config=QUANTIZATION[bits], device_map="cpu", **kwargs)
    attention = wrapper.model.model.layers[0].self_attn
    base_layer = getattr(attention.q_proj, "base_layer", attention.q_proj)  # under a LoRA wrapper when adapted
    assert isinstance(base_layer, QUANTIZED_LAYER[bits]), "quantization_config did not reach transformers"
    return wrapper


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def _assert_banks_close(bank, reference, bits) -> None:
    assert len(bank) == len(reference)
    pairs = [(bank.prefix_keys, reference.prefix_keys), (bank.prefix_values, reference.prefix_values)]
    for block, expected in zip(bank.blocks, reference.blocks):
        assert block.keys.shape == expected.keys.shape and block.values.shape == expected.values.shape
        assert torch.equal(block.positions, expected.positions)
        pairs += [(block.keys, expected.keys), (block.values, expected.values)]
    worst = max(_relative_error(actual, expected) for actual, expected in pairs)
    assert worst < TOLERANCE[bits], f"KV {worst:.1%} off the float32 model's, more than {TOLERANCE[bits]:.0%}"


def test_quantized_blocks_match_the_full_precision_blocks(bits, base_folder):
    reference = CompressedMemoryModel.from_pretrained(base_folder, config=PLAIN, show_progress=False)
    quantized = _load(base_folder, bits, config=PLAIN)
    assert quantized.fingerprint == reference.fingerprint  # a bank made in float32 is accepted, and the reverse
    bank = quantized.compress(CONTEXT)
    assert bank.blocks[0].keys.dtype == reference.model.dtype
    _assert_banks_close(bank, reference.compress(CONTEXT), bits)

    selecting = PLAIN.replace(compression=CompressionConfig("select", ratio=2, score="observed"))
    selected = quantized.with_config(selecting).compress(CONTEXT)
    expected = reference.with_config(selecting).compress(CONTEXT)
    assert [b.keys.shape for b in selected.blocks] == [b.keys.shape for b in expected.blocks]


def test_reading_and_answering_equal_the_quantized_base_on_raw_tokens(bits, base_folder, tokenizer):
    """With every KV entry kept, a block the quantized base compressed must stand for its raw tokens:
    the same logits after it as after the tokens (both sides run the same quantized
    weights and kernels, so float32 tolerance), the same working-memory updates, and the answer the
    quantized base writes from the notes."""
    wrapper = _load(base_folder, bits, config=PLAIN)
    base, prompts = wrapper.model, wrapper.prompts
    prompt = wrapper.prompt_ids(QUESTION)
    bank = wrapper.compress(CONTEXT)
    update = prompts.update_ids(QUESTION, "")
    for block in bank.blocks:
        keys = torch.cat([bank.prefix_keys, block.keys], dim=2)
        values = torch.cat([bank.prefix_values, block.values], dim=2)
        cache = DynamicCache([(keys[i][None], values[i][None]) for i in range(keys.shape[0])])
        start = bank.prefix_ids.numel() + block.num_tokens
        with torch.no_grad():
            read = base(input_ids=update[None], cache=cache,
                        position_ids=torch.arange(start, start + update.numel())[None]).logits[0]
            raw = base(input_ids=torch.cat([bank.prefix_ids, block.token_ids, update])[None]).logits[0]
        torch.testing.assert_close(read, raw[-update.numel():], atol=1e-5, rtol=1e-5)

    out = wrapper.generate(prompt, bank=bank, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    trace = out.trace[0]
    assert trace.blocks_read == [0, 1, 2]
    eos, pad = base.generation_config.eos_token_id, pad_token_id(tokenizer)

    def decode(ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        generated = base.generate(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], do_sample=False,
                                  max_new_tokens=new_tokens, pad_token_id=pad, eos_token_id=eos)
        return cut_at_eos(generated[0, ids.numel():], eos)

    memory = ""
    for step in trace.steps:
        raw = torch.cat([bank.prefix_ids, bank.blocks[step.block].token_ids, prompts.update_ids(QUESTION, memory)])
        assert step.output_ids == decode(raw, PLAIN.notes.note_tokens).tolist()
        memory = step.notes
    question = prompts.find_question(prompt[0])
    answer = decode(prompts.answer_ids(question, trace.notes), 6)
    assert out.sequences[0, prompt.shape[1]:].tolist()[:answer.numel()] == answer.tolist()


def test_adapters_stay_full_precision_and_plain_generate_is_the_base(bits, base_folder, learned_checkpoint):
    folder, float_wrapper = learned_checkpoint
    wrapper = _load(base_folder, bits, checkpoint=folder)  # made on the float32 base: the fingerprint must match
    lora = {name: weight for name, weight in wrapper.model.named_parameters() if "lora_" in name}
    saved = dict(float_wrapper.model.named_parameters())
    assert lora and all(weight.dtype == torch.float32 for weight in lora.values())
    for name, weight in lora.items():
        torch.testing.assert_close(weight, saved[name], rtol=0, atol=0)
    assert wrapper.compressor.memory_embeddings.dtype == torch.float32
    torch.testing.assert_close(wrapper.compressor.memory_embeddings, float_wrapper.compressor.memory_embeddings)
    assert wrapper.gate_head.weight.dtype == torch.float32
    torch.testing.assert_close(wrapper.gate_head.weight, float_wrapper.gate_head.weight)

    bank = wrapper.compress(CONTEXT)
    _assert_banks_close(bank, float_wrapper.compress(CONTEXT), bits)
    out = wrapper.generate(wrapper.prompt_ids(QUESTION), bank=bank, max_new_tokens=4, return_dict_in_generate=True)
    first = out.trace[0].steps[0]
    assert first.block == max(range(len(bank)), key=first.gate_scores.__getitem__)  # the head's best block

    ids = wrapper.prompt_ids(QUESTION)
    plain = AutoModelForCausalLM.from_pretrained(base_folder, quantization_config=QUANTIZATION[bits],
                                                 device_map="cpu").eval()
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=pad_token_id(wrapper.tokenizer),
                    return_dict_in_generate=True, output_logits=True)
    ours, theirs = wrapper.generate(ids, **settings), plain.generate(ids, **settings)
    assert torch.equal(ours.sequences, theirs.sequences)
    for step_logits, expected in zip(ours.logits, theirs.logits, strict=True):
        torch.testing.assert_close(step_logits, expected, rtol=0, atol=0)  # no adapter left on


def test_a_quantized_base_trains_a_fresh_compressor_like_qlora(bits, base_folder, tmp_path):
    """A compressor started on the quantized base is full precision, and its gradients reach the memory
    embeddings and the first layer's LoRA weights, which needs them to flow back through every quantized
    layer above it, also after inference (compression) ran first."""
    wrapper = _load(base_folder, bits, config=PLAIN.replace(compression=CompressionConfig("select", ratio=4)))
    wrapper.compress(CONTEXT)
    wrapper = start_or_resume(wrapper, tmp_path)
    weights = trainable_weights(wrapper)
    assert all(weight.dtype == torch.float32 for weight in weights)
    ids = wrapper.prompts.encode(CONTEXT)[None, :80]
    reconstruction_loss(wrapper, ids[:, :64], ids[:, 64:]).backward()
    assert wrapper.compressor.memory_embeddings.grad.abs().sum() > 0
    first_layer = {name: weight for name, weight in wrapper.model.named_parameters()
                   if ".layers.0." in name and "lora_B.compressmem_compressor" in name}
    assert len(first_layer) == 4
    for name, weight in first_layer.items():
        assert weight.grad is not None and weight.grad.abs().sum() > 0, name
    assert all(not weight.requires_grad for name, weight in wrapper.model.named_parameters() if "lora_" not in name)
