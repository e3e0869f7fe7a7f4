"""A non-finite gate score never passes a block: sharpness out of range and a NaN head are refused where they are
given, and NaN scores at run time stop the read with a clear error (issue 26, item 6)."""

from __future__ import annotations

import math

import pytest
import torch

from compressmem import ChunkingConfig, CompressionConfig, ConfigError, GateConfig, MemoryConfig
from compressmem.gate import GateHead, GateHeadError, HeadGate, register

from .conftest import tiny_wrapper

CONTEXT = "The weather was mild and the town was quiet that year. " * 30


@pytest.mark.parametrize("sharpness", [1e300, 1e-300, 5000.0, 0.001])
def test_a_sharpness_whose_scores_overflow_is_refused(sharpness):
    with pytest.raises(ConfigError, match="gate.sharpness must be a number from 0.01 to 1000"):
        GateConfig("attention", sharpness=sharpness)


@pytest.mark.parametrize("sharpness", [0.01, 1.0, 1000.0])
def test_the_attention_gate_scores_are_finite_across_the_allowed_sharpness(tokenizer, sharpness):
    config = MemoryConfig(chunking=ChunkingConfig(40), compression=CompressionConfig("select", ratio=4),
                          gate=GateConfig("attention", top_k=2, sharpness=sharpness))
    wrapper = tiny_wrapper("llama", tokenizer, config)
    bank = wrapper.compress(CONTEXT)
    answer = wrapper.answer("Was the town quiet?", bank=bank, max_new_tokens=2, return_sources=True)
    scores = answer.trace.steps[0].gate_scores
    assert len(scores) == len(bank) and all(math.isfinite(s) for s in scores)


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_a_head_given_in_memory_with_nan_weights_is_refused(tokenizer, name):
    head = GateHead((1,), heads=4)
    with torch.no_grad():
        getattr(head, name).fill_(math.nan)
    with pytest.raises(GateHeadError, match=f"{name} holds NaN"):
        HeadGate(tokenizer, head)


@register("nan", reads_keys=False)
class NanGate:
    """Scores every block NaN, as a gate over a damaged model would."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def from_config(cls, config, tokenizer, layers, head):
        return cls(tokenizer)

    def index(self, bank, model):
        return len(bank)

    def score(self, model, prompts, index):
        return torch.full((len(prompts), index), math.nan)

    def missing(self, index, terms):
        return None


def test_nan_scores_at_run_time_stop_the_read_instead_of_passing_blocks(tokenizer):
    config = MemoryConfig(chunking=ChunkingConfig(40), gate=GateConfig("nan", top_k=2))
    wrapper = tiny_wrapper("llama", tokenizer, config)
    bank = wrapper.compress(CONTEXT)
    with pytest.raises(FloatingPointError, match=r"NanGate scored \d+ of \d+ blocks NaN or infinite"):
        wrapper.answer("Was the town quiet?", bank=bank, max_new_tokens=2)
