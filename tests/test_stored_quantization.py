"""`stored_quantization`: the (bits, group) a bank's blocks are quantized to, from its compression settings."""

import pytest

from compressmem.config import DEFAULT_GROUP, CompressionConfig
from compressmem.errors import ConfigError
from compressmem.quantize import stored_quantization


def test_full_precision_and_no_settings_quantize_nothing():
    assert stored_quantization(None) is None
    assert stored_quantization(CompressionConfig("select", 4)) is None


def test_quantized_settings_give_their_bits_and_group():
    assert stored_quantization(CompressionConfig("select", 4, bits=4)) == (4, DEFAULT_GROUP)
    assert stored_quantization(CompressionConfig("select", 4, bits=2, group=32)) == (2, 32)


def test_quantized_settings_without_a_group_are_refused():
    unresolved = CompressionConfig("select", 4, bits=8)
    object.__setattr__(unresolved, "group", None)  # what only bypassing the constructor can make
    with pytest.raises(ConfigError, match=r"compression\.group is unset"):
        stored_quantization(unresolved)
