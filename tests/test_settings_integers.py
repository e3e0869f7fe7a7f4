"""Settings counted in whole numbers are whole numbers, a quantization group longer than its axis costs nothing,
and notes generation settings the reader sets itself are refused by name (issue 26, item 9)."""

from __future__ import annotations

import json

import pytest
import torch

from compressmem import ChunkingConfig, CompressionConfig, ConfigError, MemoryConfig, ReadingConfig
from compressmem.quantize import CHANNELS, TOKENS, quantize

from .conftest import tiny_wrapper


@pytest.mark.parametrize("make, name", [
    (lambda: CompressionConfig(bits=4.0), "compression.bits"),
    (lambda: CompressionConfig(bits=True), "compression.bits"),
    (lambda: ReadingConfig(keep_bits=8.0), "reading.keep_bits"),
    (lambda: CompressionConfig(bits=4, group=64.0), "compression.group"),
])
def test_a_float_where_an_integer_is_counted_is_refused(make, name):
    with pytest.raises(ConfigError, match=name):
        make()


def test_a_json_config_with_float_bits_is_refused(tmp_path):
    data = MemoryConfig(compression=CompressionConfig(bits=4), reading=ReadingConfig("compressed")).to_dict()
    data["compression"]["bits"] = 4.0
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="compression.bits must be one of .* got 4.0"):
        MemoryConfig.load(path)


@pytest.mark.parametrize("axis", [TOKENS, CHANNELS])
def test_a_group_longer_than_its_axis_is_one_group_over_it(axis):
    x = torch.randn(2, 40, 16)
    whole = x.shape[axis]
    huge = quantize(x, 4, 10**12, axis)  # would need terabytes if the group were padded or repeated
    exact = quantize(x, 4, whole, axis)
    assert torch.equal(huge.scales, exact.scales) and torch.equal(huge.data, exact.data)
    assert torch.equal(huge.dequantize(), exact.dequantize())
    assert (huge.dequantize() - x).abs().max() < 0.5


@pytest.mark.parametrize("setting", ["max_new_tokens", "max_length", "pad_token_id"])
def test_notes_settings_the_reader_sets_itself_are_refused_by_name(tokenizer, setting):
    wrapper = tiny_wrapper("llama", tokenizer, MemoryConfig(chunking=ChunkingConfig(40)))
    bank = wrapper.compress("The weather was mild and the town was quiet that year. " * 12)
    with pytest.raises(ConfigError, match=f"notes generation settings may not set {setting}"):
        wrapper.answer("Was the town quiet?", bank=bank, notes_kwargs={setting: 5}, max_new_tokens=2)
