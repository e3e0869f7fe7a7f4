"""Raw reads keep the KV they computed (`ReadingConfig.keep_bits`) and a later read of the block reads it instead."""

import gc

import pytest
import torch

from compressmem import (ChunkingConfig, CompressionConfig, ConfigError, MemoryConfig, NotesConfig, PromptConfig,
                         ReadingConfig)
from compressmem.bank import KeptBlock, KeptKV, owner_token
from compressmem.config import DEFAULT_KEEP_BITS
from compressmem.quantize import CHANNELS, TOKENS, quantize
from compressmem.reader import Reasoner, StepInput, generate_steps

from .conftest import tiny_wrapper

# every row answered once from its notes, unjudged (not_found None), so that the forward passes are the reads' and
# that one answer's
KEEP = MemoryConfig(chunking=ChunkingConfig(64), gate=None, reading=ReadingConfig(keep_bits=8, until="all"),
                    notes=NotesConfig(note_tokens=8), prompts=PromptConfig(not_found=None))


def _forward_lengths(model) -> tuple[list[int], object]:
    """Input lengths of the model's forward passes, recorded from now on (and the hook, to remove it)."""
    lengths = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    return lengths, hook


def test_kept_kv_is_exactly_the_blocks_kv_whatever_the_padding_of_the_batch(tokenizer, essay_text):
    """The span a raw row keeps, in a batch with a compressed row and ragged prompts, is the chunk's KV at its
    block positions: what compressing the chunk with method `none` gives."""
    none = tiny_wrapper("qwen2", tokenizer, MemoryConfig(chunking=ChunkingConfig(64), gate=None,
                                                          compression=CompressionConfig("none"),
                                                          reading=ReadingConfig("compressed")))
    bank = none.compress(essay_text[:1200])
    p = bank.prefix_ids.numel()
    first, last = bank.blocks[0], bank.blocks[len(bank) - 1]
    compressed = StepInput(torch.cat([bank.prefix_keys, last.keys], 2), torch.cat([bank.prefix_values, last.values], 2),
                           none.prompts.update_ids("A much longer question than the other row's?", ""),
                           p + last.num_tokens)
    raw = StepInput(None, None, torch.cat([bank.prefix_ids, first.token_ids, none.prompts.update_ids("Who?", "")]), 0)
    written = generate_steps(none.model, tokenizer, [compressed, raw], 4, keep=[None, (0, p + first.num_tokens)])
    assert written[0].kv is None
    keys, values = written[1].kv
    torch.testing.assert_close(keys, torch.cat([bank.prefix_keys, first.keys], 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, torch.cat([bank.prefix_values, first.values], 2), atol=1e-5, rtol=1e-5)


def test_a_block_read_again_reads_its_kept_kv_without_prefilling_the_chunk(tokenizer, essay_text):
    model = tiny_wrapper("llama", tokenizer, KEEP)
    bank = model.compress(essay_text[:1200])
    question = model.prompt_ids("What does the essay say?")
    lengths, hook = _forward_lengths(model.model)
    first = model.generate(question, bank=bank, max_new_tokens=2, return_dict_in_generate=True).trace[0]
    p = bank.prefix_ids.numel()
    assert [p + bank.infos[s.block].num_tokens + len(s.prompt_ids) for s in first.steps] == \
        [n for n in lengths if n > len(first.answer_prompt_ids or []) and n > 1]  # each read pre-filled its chunk
    lengths.clear()
    again = model.generate(question, bank=bank, max_new_tokens=2, return_dict_in_generate=True).trace[0]
    hook.remove()
    assert len(bank.kept) == len(bank) and not any(step.reused for step in first.steps)
    assert [step.reused for step in again.steps] == [True] * len(bank)
    assert set(lengths) <= {1, len(again.answer_prompt_ids or [])} | {len(s.prompt_ids) for s in again.steps}
    # the second question pre-filled only its prompts: the chunks came from the kept KV


def test_reading_kept_kv_matches_reading_the_block_quantized_the_same_way(tokenizer, essay_text):
    """A reused read is a compressed read of the block at `keep_bits`: same notes as a `none` bank of 8 bits."""
    kept = tiny_wrapper("llama", tokenizer, KEEP)
    bank = kept.compress(essay_text[:700])
    question = kept.prompt_ids("What does the essay say?")
    kept.generate(question, bank=bank, max_new_tokens=2)
    reused = kept.generate(question, bank=bank, max_new_tokens=2, return_dict_in_generate=True).trace[0]
    quantized = kept.with_config(KEEP.replace(compression=CompressionConfig("none", bits=8),
                                              reading=ReadingConfig("compressed")))
    read = quantized.generate(question, bank=quantized.compress(essay_text[:700]), max_new_tokens=2,
                              return_dict_in_generate=True).trace[0]
    assert [s.output_ids for s in reused.steps] == [s.output_ids for s in read.steps]


def test_rollouts_never_read_kept_kv(tokenizer, essay_text):
    """A rollout's reads are scored later as raw reads, so they must be raw reads."""
    model = tiny_wrapper("llama", tokenizer, KEEP)
    bank = model.compress(essay_text[:700])
    model.generate(model.prompt_ids("Who?"), bank=bank, max_new_tokens=2)
    assert len(bank.kept) == len(bank)
    traces = model.reasoner.run(["Who?"], [bank], show_progress=False, logprobs=True)
    assert traces[0].steps and not any(step.reused for step in traces[0].steps)


def _reused(model, bank, question: str = "Who?") -> list[bool]:
    trace = model.generate(model.prompt_ids(question), bank=bank, max_new_tokens=2, return_dict_in_generate=True)
    return [step.reused for step in trace.trace[0].steps]


def test_a_bank_read_by_another_model_never_reads_the_kv_the_first_one_kept_and_keeps_its_own_beside(
    tokenizer, essay_text
):
    """Another model object (here the same weights, so the bank's fingerprint passes; with another adapter or
    dtype it would compute other KV) reads the tokens, not what the first one kept, and keeps its own KV beside
    the first one's: neither clears the other's, so both read their kept KV from then on."""
    first, other = tiny_wrapper("llama", tokenizer, KEEP), tiny_wrapper("llama", tokenizer, KEEP)
    bank = first.compress(essay_text[:700])
    _reused(first, bank)
    assert len(bank.kept) == len(bank) and bank.kept.get(0, other.reasoner.keeper) is None
    assert _reused(other, bank) == [False] * len(bank)
    assert bank.kept.owners == {first.reasoner.keeper, other.reasoner.keeper} and len(bank.kept) == 2 * len(bank)
    assert _reused(first, bank) == [True] * len(bank) and _reused(other, bank) == [True] * len(bank)


def test_kv_kept_for_a_collected_model_is_never_read_by_a_later_model_at_the_same_address():
    """`id()` of a model that was garbage collected may be a later model's: the owner key must not be."""

    class Model:  # what the reasoner's owner key reads of a model
        dtype = torch.float32

    def reasoner(model: Model) -> Reasoner:
        return Reasoner(model, prompts=None, reading=ReadingConfig(keep_bits=8), notes=NotesConfig(), gate=None,
                        gate_config=None)

    kept = KeptKV()
    gone = Model()
    keys = torch.randn(2, 2, 8, 16)
    block = KeptBlock(quantize(keys, 8, 32, TOKENS), quantize(keys, 8, 32, CHANNELS))
    kept.put(0, block, (keys[:, :, :2], keys[:, :, :2]), 1 << 20, reasoner(gone).keeper)
    address = id(gone)
    del gone
    gc.collect()
    later = _object_at(address, Model)
    assert kept.get(0, reasoner(later).keeper) is None
    assert owner_token(later) == owner_token(later) != owner_token(Model())


def _object_at(address: int, make):
    """A new object from `make()` at `address` (CPython hands a freed slot to the next object of its size)."""
    held = []
    for _ in range(10_000):
        candidate = make()
        if id(candidate) == address:
            return candidate
        held.append(candidate)
    pytest.skip("the interpreter gave no new object the freed address")


def test_sliding_window_layers_keep_nothing(tokenizer, essay_text):
    """A sliding layer's cache may hold only the window, so no block is kept rather than a truncated one."""
    model = tiny_wrapper("gemma3", tokenizer, KEEP)
    bank = model.compress(essay_text[:700])
    model.generate(model.prompt_ids("Who?"), bank=bank, max_new_tokens=2)
    assert len(bank.kept) == 0


def test_kept_kv_stays_within_its_budget_dropping_the_least_recently_read():
    kept = KeptKV()
    keys = torch.randn(2, 2, 64, 16)
    block = KeptBlock(quantize(keys, 8, 32, TOKENS), quantize(keys, 8, 32, CHANNELS))
    prefix = (torch.zeros(2, 2, 4, 16), torch.zeros(2, 2, 4, 16))
    budget = 2 * 1024 + 3 * block.nbytes
    for index in range(3):
        kept.put(index, block, prefix, budget, "me")
    assert kept.get(0, "me") is not None  # 0 is now the most recently read
    kept.put(3, block, prefix, budget, "me")
    assert 1 not in kept and {0, 2, 3} <= {i for i in range(4) if i in kept} and kept.nbytes <= budget
    kept.put(4, block, prefix, 1, "me")
    assert len(kept) == 0 and kept.get(4, "me") is None


def test_keep_settings_are_refused_where_they_would_be_ignored_or_wrong():
    with pytest.raises(ConfigError, match="compressed reading already reads"):
        ReadingConfig("compressed", keep_bits=4)
    with pytest.raises(ConfigError, match="keep_bits, which is 0"):
        ReadingConfig(keep_bits=0, keep_mib=64)
    with pytest.raises(ConfigError, match="keep_bits must be one of"):
        ReadingConfig(keep_bits=16)
    assert ReadingConfig().keep_bits == DEFAULT_KEEP_BITS and ReadingConfig().keep_mib > 0
    assert ReadingConfig("compressed").keep_bits == 0 and MemoryConfig.memagent().reading.keep_bits == 0


def test_a_configuration_keeping_kv_round_trips(tmp_path):
    config = KEEP.replace(reading=ReadingConfig(keep_bits=4, keep_mib=32))
    config.save(tmp_path / "config.json")
    assert MemoryConfig.load(tmp_path / "config.json") == config
