"""A gate is one file: a class with `index`, `score`, `missing` and `from_config`, registered by kind."""

from __future__ import annotations

import pytest
import torch

from compressmem import ChunkingConfig, ConfigError, GateConfig, MemoryConfig, ReadingConfig
from compressmem.config import register_gate_kind
from compressmem.gate import AttentionGate, Gate, GateHead, HeadGate, LexicalGate, register

from .conftest import tiny_wrapper

FILLER = "The weather was mild and the town was quiet that year. " * 12
CONTEXT = FILLER + "The zephyrine lockbox holds the opal key. " + FILLER


@register("marked", reads_keys=False)
class MarkedGate:
    """Passes the blocks whose text holds a marker word; says the bank lacks whatever terms it was told to."""

    lacking: tuple[str, ...] | None = None  # what `missing` reports (None: cannot tell)
    built = 0

    def __init__(self, tokenizer, marker: str) -> None:
        self.tokenizer = tokenizer
        self.marker = marker

    @classmethod
    def from_config(cls, config, tokenizer, layers, head):
        return cls(tokenizer, "zephyrine")

    def index(self, bank, model):
        MarkedGate.built += 1
        return [self.marker in self.tokenizer.decode(bank.token_ids(i)) for i in range(len(bank))]

    def score(self, model, prompts, index):
        return torch.tensor([[1.0 if marked else 0.0 for marked in index]] * len(prompts))

    def missing(self, index, terms):
        return None if MarkedGate.lacking is None else sorted(MarkedGate.lacking)


def _wrapper(tokenizer, **reading):
    config = MemoryConfig(
        chunking=ChunkingConfig(40), gate=GateConfig("marked", top_k=1), reading=ReadingConfig(**reading)
    )
    return tiny_wrapper("llama", tokenizer, config)


def test_a_gate_defined_in_one_file_is_used_by_the_model_and_the_reader(tokenizer):
    wrapper = _wrapper(tokenizer, until="all")
    bank = wrapper.compress(CONTEXT)
    marked = next(i for i in range(len(bank)) if "zephyrine" in tokenizer.decode(bank.token_ids(i)))
    built = MarkedGate.built
    MarkedGate.lacking = None
    answer = wrapper.answer("Where is the zephyrine lockbox?", bank=bank, max_new_tokens=4, return_sources=True)
    assert answer.trace.blocks_read == [marked]
    assert answer.trace.steps[0].gate_scores[marked] == 1.0
    assert MarkedGate.built == built + 1  # the index is made when the bank is first read with this gate


def test_the_reader_asks_the_gate_which_terms_the_bank_lacks(tokenizer):
    wrapper = _wrapper(tokenizer, until="answered")
    bank = wrapper.compress(CONTEXT)
    MarkedGate.lacking = ("xyzzy",)
    try:
        refused = wrapper.answer("Where is the xyzzy lockbox?", bank=bank, max_new_tokens=4, return_sources=True)
    finally:
        MarkedGate.lacking = None
    assert refused.trace.blocks_read == [] and refused.trace.missing_terms == ["xyzzy"] and not refused.found
    read = wrapper.answer("Where is the xyzzy lockbox?", bank=bank, max_new_tokens=4, return_sources=True)  # the gate cannot tell
    assert len(read.trace.blocks_read) == 1


def test_gate_kinds_are_checked_when_configured():
    with pytest.raises(ConfigError, match="gate.kind must be one of"):
        GateConfig("unregistered")
    with pytest.raises(ConfigError, match="already registered"):
        register_gate_kind("marked", reads_keys=True)
    assert not GateConfig("marked").reads_keys and GateConfig("attention").reads_keys and GateConfig("head").reads_keys


def test_the_built_in_gates_follow_the_protocol(tokenizer):
    gates = [LexicalGate(tokenizer), AttentionGate(tokenizer, (1,)), HeadGate(tokenizer, GateHead((1,), 4))]
    assert all(isinstance(gate, Gate) for gate in gates)
    assert not isinstance(object(), Gate)
