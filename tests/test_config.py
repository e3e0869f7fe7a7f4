import json

import pytest

from compressmem import (
    ChunkingConfig,
    CompressionConfig,
    ConfigError,
    GateConfig,
    MemoryConfig,
    NotesConfig,
    PromptConfig,
    ReadingConfig,
)
from compressmem.checkpoints import SMOLLM2_GATE, SMOLLM2_LEARNED
from compressmem.config import DEFAULT_NOTE_TOKENS, migrate_flat


def test_a_nested_configuration_round_trips_through_json(tmp_path):
    config = MemoryConfig(chunking=ChunkingConfig(512), compression=CompressionConfig("select", ratio=2),
                          gate=GateConfig("attention", top_k=None, threshold=0.2, layers=(3, 5)),
                          reading=ReadingConfig(order="score", max_steps=4), notes=NotesConfig(update="rewrite"))
    path = tmp_path / "config.json"
    config.save(path)
    loaded = MemoryConfig.load(path)
    assert loaded == config and loaded.gate.layers == (3, 5)
    saved = json.loads(path.read_text())
    assert saved["chunking"] == {"size": 512} and saved["compression"]["score"] == "keynorm"
    assert saved["notes"] == {"update": "rewrite", "max_tokens": 1024, "note_tokens": None, "min_grounding": None}


def test_stage_defaults_are_resolved_where_the_stage_uses_them():
    assert CompressionConfig("select").ratio == 4.0 and CompressionConfig("select").score == "keynorm"
    assert CompressionConfig("none").ratio == 1.0 and CompressionConfig("none").score is None
    assert CompressionConfig("learned", ratio=8).score is None
    assert GateConfig("attention").sharpness == 8.0 and GateConfig("lexical").sharpness is None
    assert NotesConfig().note_tokens == DEFAULT_NOTE_TOKENS and NotesConfig(update="rewrite").note_tokens is None
    assert NotesConfig().budget == DEFAULT_NOTE_TOKENS and NotesConfig(update="rewrite", max_tokens=300).budget == 300


def test_the_default_bank_records_no_compressor():
    config = MemoryConfig()
    assert config.compression is None and not config.needs_kv and config.gate.kind == "semantic"


def test_memagent_preset_reads_raw_chunks_without_gate_or_compression():
    config = MemoryConfig.memagent(256)
    assert (config.compression, config.gate, config.reading.mode, config.chunking.size) == (None, None, "raw", 256)
    assert not config.needs_kv


@pytest.mark.parametrize("make, field", [
    (lambda: ChunkingConfig(0), "chunking.size"), (lambda: ChunkingConfig(1.5), "chunking.size"),
    (lambda: CompressionConfig("gist"), "compression.method"), (lambda: CompressionConfig(ratio=0.5), "ratio"),
    (lambda: CompressionConfig(ratio="4"), "ratio"), (lambda: CompressionConfig(score="random"), "score"),
    (lambda: GateConfig("magic"), "gate.kind"), (lambda: GateConfig(threshold=1.5), "gate.threshold"),
    (lambda: GateConfig(top_k=0), "gate.top_k"), (lambda: GateConfig("attention", layers=()), "gate.layers"),
    (lambda: GateConfig("attention", layers=(-1, 0)), "gate.layers"),
    (lambda: GateConfig("attention", sharpness=-1.0), "gate.sharpness"),
    (lambda: GateConfig("attention", sharpness=float("inf")), "gate.sharpness"),
    (lambda: GateConfig("attention", sharpness=float("nan")), "gate.sharpness"),
    (lambda: MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("select", ratio=65),
                          reading=ReadingConfig("compressed")), "compression.ratio 65 would keep less than one"),
    (lambda: ReadingConfig("both"), "reading.mode"), (lambda: ReadingConfig(order="random"), "reading.order"),
    (lambda: ReadingConfig(recall="yes"), "reading.recall"), (lambda: ReadingConfig(max_steps=0), "max_steps"),
    (lambda: NotesConfig(update="merge"), "notes.update"), (lambda: NotesConfig(max_tokens=-1), "max_tokens"),
    (lambda: NotesConfig(min_grounding=2.0), "min_grounding"),
    (lambda: PromptConfig(answer_template="no placeholders"), "answer_template"),
    (lambda: PromptConfig(update_template="{notes} only"), "update_template"),
    (lambda: PromptConfig(empty_notes=None), "prompts.empty_notes must be a string"),
    (lambda: MemoryConfig(query_tokens=0), "query_tokens"), (lambda: MemoryConfig(gate="lexical"), "gate"),
])
def test_invalid_values_name_the_setting(make, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make()


@pytest.mark.parametrize("make, ignored", [
    (lambda: CompressionConfig("none", ratio=4), "ratio must be 1"),
    (lambda: CompressionConfig("learned", score="keynorm"), "score ranks entries for method='select' only"),
    (lambda: GateConfig("lexical", layers=(1, 2)), "gate.layers applies to kind='attention' only"),
    (lambda: GateConfig("head", sharpness=4.0), "the trained head brings its own"),
    (lambda: NotesConfig(update="rewrite", note_tokens=50), "notes.note_tokens applies to update='append' only"),
    (lambda: NotesConfig(update="rewrite", min_grounding=0.5), "min_grounding applies to update='append' only"),
    (lambda: MemoryConfig(compression=CompressionConfig("select")), "would be ignored.*semantic gate and raw"),
    (lambda: MemoryConfig(gate=None, compression=CompressionConfig("none")), "would be ignored.*no gate"),
    (lambda: MemoryConfig(gate=GateConfig("attention")), "'attention' reads compressed KV.*set compression"),
    (lambda: MemoryConfig(gate=GateConfig("attention"), reading=ReadingConfig("compressed")),
     "'attention' and reading mode 'compressed' read compressed KV"),
    (lambda: MemoryConfig(gate=None, reading=ReadingConfig(recall=True)), "recall.*needs a gate"),
    (lambda: MemoryConfig(gate=None, reading=ReadingConfig(order="score")), "order='score'.*needs a gate"),
    (lambda: ReadingConfig(until="found"), "reading.until must be one of"),
    (lambda: CompressionConfig("select", ratio=float("inf")), "finite number"),
    (lambda: GateConfig("attention", layers=(0, 0, 0)), "names a layer twice"),
    (lambda: MemoryConfig(gate=GateConfig(top_k=None, threshold=0.5), reading=ReadingConfig(order="score",
                                                                                           recall=True)),
     "recall.*order='document'"),
])
def test_settings_a_stage_would_ignore_are_refused(make, ignored):
    with pytest.raises(ConfigError, match=ignored):
        make()


def test_a_gate_needs_a_selection_rule():
    with pytest.raises(ConfigError, match="gate.top_k or gate.threshold"):
        GateConfig("attention", top_k=None, threshold=None)


@pytest.mark.parametrize("template", ["{question} {notes} {extra}", "{question} {notes} {", "{question} }{notes}",
                                      "{question} {notes} {0}", "{question} {notes} {notes.__len__}",
                                      "{question.__class__.__mro__} {notes}", "{question!r} {notes}",
                                      "{question:>{notes}} {notes}", "{question} {notes[0]}", "{question} {notes!s}"])
def test_templates_that_would_fail_at_run_time_are_refused(template):
    with pytest.raises(ConfigError, match="answer_template"):
        PromptConfig(answer_template=template)


def test_unknown_settings_are_refused_on_load():
    with pytest.raises(ConfigError, match="chunksize"):
        MemoryConfig.from_dict({"chunksize": 12})
    with pytest.raises(ConfigError, match="Unknown gate settings.*'depth'"):
        MemoryConfig.from_dict({"gate": {"kind": "lexical", "depth": 2}})
    with pytest.raises(ConfigError, match="from_legacy"):
        MemoryConfig.from_dict({"chunk_size": 12})


def test_update_template_follows_the_notes_mode():
    assert "Quote" in PromptConfig().update_for(NotesConfig())
    assert "updated notes" in PromptConfig().update_for(NotesConfig(update="rewrite"))
    assert PromptConfig(update_template="{question}!").update_for(NotesConfig()) == "{question}!"


@pytest.mark.parametrize("checkpoint", [SMOLLM2_GATE, SMOLLM2_LEARNED], ids=["gate", "learned"])
def test_release_01_flat_configurations_migrate_keeping_only_what_their_stages_read(checkpoint):
    flat = json.loads((checkpoint / "compressmem_config.json").read_text())["memory_config"]
    config = MemoryConfig.from_legacy(flat)
    assert config.chunking.size == flat["chunk_size"] and config.notes.max_tokens == flat["memory_tokens"]
    assert config.compression == CompressionConfig(flat["compressor"], flat["ratio"],
                                                   flat["score"] if flat["compressor"] == "select" else None)
    assert config.gate.kind == flat["gate"] and config.gate.threshold == flat["gate_threshold"]
    assert config.gate.sharpness is None  # 0.1 wrote the attention gate's sharpness for every gate
    assert config.reading == ReadingConfig(flat["read"], flat["read_order"], flat["recall"], flat["max_steps"])


def test_migration_drops_a_compressor_nothing_read_and_renames_template_fields():
    flat = {"chunk_size": 256, "compressor": "select", "ratio": 4.0, "gate": "lexical", "read": "raw",
            "gate_layers": [3], "memory_update": "rewrite", "note_tokens": 96, "min_grounding": 0.8,
            "answer_template": "Memory: {memory}\n{question}", "compress_batch_size": 8, "fixed_update_tokens": True}
    config = MemoryConfig.from_dict(migrate_flat(flat))
    assert config.compression is None and config.gate == GateConfig("lexical", top_k=1)  # 0.1's default
    scored = MemoryConfig.from_legacy({"gate": "lexical", "gate_top_k": None, "gate_threshold": 0.3,
                                       "read_order": "score", "recall": True})  # 0.1 ignored recall here
    assert scored.reading == ReadingConfig(order="score", recall=False)
    assert config.notes == NotesConfig(update="rewrite")
    assert config.prompts.answer_template == "Memory: {notes}\n{question}"


def test_a_configuration_file_that_is_not_json_is_refused_naming_it(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="config.json is not a JSON configuration"):
        MemoryConfig.load(path)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigError, match="config.json is not a JSON configuration"):
        MemoryConfig.load(path)


def test_release_0_1_flat_keywords_are_read_as_0_1_read_them_with_a_warning_naming_the_new_form():
    with pytest.warns(DeprecationWarning, match=r"chunking=ChunkingConfig\(size=\.\.\.\).*gate=GateConfig\(top_k"):
        config = MemoryConfig(chunk_size=1024, gate_top_k=2)
    assert config == MemoryConfig.from_legacy({"chunk_size": 1024, "gate_top_k": 2})
    assert config.chunking.size == 1024 and config.gate.top_k == 2
    with pytest.raises(ConfigError, match="mixes release 0.1's flat settings"):
        MemoryConfig(chunk_size=1024, notes=NotesConfig())
