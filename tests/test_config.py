import json

import pytest

from compressmem import ConfigError, MemoryConfig


def test_defaults_are_valid_and_round_trip_through_json(tmp_path):
    config = MemoryConfig(chunk_size=512, gate_layers=(3, 5), recall=True, gate_threshold=0.2)
    path = tmp_path / "config.json"
    config.save(path)
    loaded = MemoryConfig.load(path)
    assert loaded == config
    assert loaded.gate_layers == (3, 5)
    assert json.loads(path.read_text())["chunk_size"] == 512


def test_memagent_preset_reads_raw_chunks_without_gate_or_compression():
    config = MemoryConfig.memagent(chunk_size=256)
    assert (config.compressor, config.ratio, config.gate, config.read) == ("none", 1.0, None, "raw")
    assert config.chunk_size == 256
    assert not config.needs_kv


@pytest.mark.parametrize("field, value", [
    ("chunk_size", 0), ("chunk_size", 1.5), ("compressor", "gist"), ("ratio", 0.5), ("ratio", "4"),
    ("gate", "magic"), ("gate_threshold", 1.5), ("gate_top_k", 0), ("memory_tokens", -1), ("max_steps", 0),
    ("read", "both"), ("recall", "yes"), ("score", "random"), ("memory_update", "merge"), ("min_grounding", 2.0),
    ("gate_layers", ()), ("answer_template", "no placeholders"), ("update_template", "{memory} only"),
])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        MemoryConfig(**{field: value})


def test_compressor_none_requires_ratio_one():
    with pytest.raises(ConfigError, match="ratio must be 1"):
        MemoryConfig(compressor="none", ratio=4)


def test_gate_needs_a_selection_rule():
    with pytest.raises(ConfigError, match="gate_top_k or gate_threshold"):
        MemoryConfig(gate="attention", gate_top_k=None, gate_threshold=None)


def test_unknown_fields_are_rejected_on_load():
    with pytest.raises(ConfigError, match="chunksize"):
        MemoryConfig.from_dict({"chunksize": 12})


def test_update_template_follows_memory_update_mode():
    assert "Quote" in MemoryConfig().resolved_update_template
    assert "updated notes" in MemoryConfig(memory_update="rewrite").resolved_update_template
