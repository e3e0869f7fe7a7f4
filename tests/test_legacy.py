"""What release 0.1 wrote still loads and answers the same: its banks (file and folder) and its checkpoints."""

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from compressmem import (
    ChunkingConfig,
    CompressedMemoryModel,
    CompressionConfig,
    GateConfig,
    MemoryBank,
    MemoryConfig,
    NotesConfig,
    ReadingConfig,
)

from .conftest import tiny_wrapper

RELEASE_01 = Path(__file__).parent / "data" / "release-0.1"
FORMAT_3 = Path(__file__).parent / "data" / "format-3"
NOTES = NotesConfig(note_tokens=6)
COMPRESSED = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("select", ratio=4),
                          gate=GateConfig("attention", layers=(1, 2)), reading=ReadingConfig("compressed"), notes=NOTES)
LEXICAL = MemoryConfig(chunking=ChunkingConfig(64), notes=NOTES)


@pytest.mark.parametrize("name, config", [("compressed.safetensors", COMPRESSED), ("compressed-folder", COMPRESSED),
                                          ("lexical.safetensors", LEXICAL)])
def test_a_release_01_bank_loads_as_the_bank_this_release_builds_and_answers_the_same(tokenizer, name, config):
    model = tiny_wrapper("llama", tokenizer, config, seed=0)
    legacy = MemoryBank.load(RELEASE_01 / name)
    fresh = model.compress((RELEASE_01 / "text.txt").read_text())
    assert legacy.provenance == fresh.provenance and len(legacy) == len(fresh) > 3
    assert legacy.nbytes == fresh.nbytes and list(legacy.infos) == list(fresh.infos)
    for old, new in zip(legacy.blocks, fresh.blocks):
        assert torch.equal(old.token_ids, new.token_ids)
        for field in ("keys", "values", "positions"):
            ours, theirs = getattr(old, field), getattr(new, field)
            assert (ours is None) == (theirs is None) and (ours is None or torch.allclose(ours, theirs, atol=1e-6))
    prompt = model.prompt_ids("Where was Mara Quill born?")
    answers = [model.generate(prompt, bank=bank, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
               for bank in (legacy, fresh)]
    assert torch.equal(answers[0].sequences, answers[1].sequences)
    assert answers[0].trace[0].blocks_read == answers[1].trace[0].blocks_read


@pytest.mark.parametrize("name, config", [("compressed.safetensors", COMPRESSED), ("compressed-folder", COMPRESSED),
                                          ("lexical.safetensors", LEXICAL)])
def test_a_format_3_bank_answers_as_a_fresh_one_and_rebuilds_its_gate_index_kept_without_a_digest(
        tokenizer, tmp_path, caplog, name, config):
    copy = tmp_path / name  # a folder bank takes the rebuilt index in: never write into tests/data
    (shutil.copytree if (FORMAT_3 / name).is_dir() else shutil.copy)(FORMAT_3 / name, copy)
    model = tiny_wrapper("llama", tokenizer, config, seed=0)
    old = MemoryBank.load(copy, verify=True)
    text = (RELEASE_01 / "text.txt").read_text()
    if copy.is_dir():  # streamed in the pieces the folder was written from
        fresh = model.compress_stream([text[:700], text[700:]], tmp_path / "fresh", shard_blocks=3)
    else:
        fresh = model.compress(text)
    assert old.provenance == fresh.provenance and old.nbytes == fresh.nbytes and len(old) == len(fresh) > 3
    assert all(torch.equal(a.token_ids, b.token_ids) for a, b in zip(old.blocks, fresh.blocks))
    prompt = model.prompt_ids("Where was Mara Quill born?")
    with caplog.at_level("WARNING"):
        answers = [model.generate(prompt, bank=bank, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
                   for bank in (old, fresh)]
    assert "was kept without a digest (by bank format 3 or earlier); it is rebuilt" in caplog.text
    assert torch.equal(answers[0].sequences, answers[1].sequences)
    assert answers[0].trace[0].blocks_read == answers[1].trace[0].blocks_read
    if copy.is_dir():  # the rebuilt index is kept in the folder, now under a digest
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert MemoryBank.load(copy, verify=True).derived("keys-1-2") is not None
        assert not caplog.text


def test_a_release_01_checkpoint_folder_migrates_on_read(base_folder, tmp_path):
    legacy = tmp_path / "ckpt"
    CompressedMemoryModel.from_pretrained(base_folder, show_progress=False).save_pretrained(legacy)
    path = legacy / "compressmem_config.json"
    payload = json.loads(path.read_text())
    flat = {"chunk_size": 128, "compressor": "select", "ratio": 4.0, "score": "keynorm", "gate": "attention",
            "gate_threshold": None, "gate_top_k": 2, "gate_layers": [1, 2], "gate_sharpness": 6.0,
            "memory_tokens": 512, "memory_update": "append", "note_tokens": 32, "min_grounding": 0.8,
            "fixed_update_tokens": False, "max_steps": None, "read_order": "document", "recall": True, "read": "raw",
            "compress_batch_size": 4, "direct_max_tokens": None, "query_tokens": 256, "update_template": None,
            "answer_template": "Notes: {memory}\n\n{question}", "gate_template": "{question}\n{memory}",
            "empty_memory": "(none)", "section_header": "Section:\n"}
    path.write_text(json.dumps({"format_version": 1, "base_model": payload["base_model"], "memory_config": flat}))
    model = CompressedMemoryModel.from_pretrained(base_folder, checkpoint=legacy, show_progress=False)
    assert model.memory_config == MemoryConfig.from_legacy(flat)
    assert model.memory_config.gate == GateConfig("attention", top_k=2, layers=(1, 2), sharpness=6.0)
    assert model.memory_config.prompts.answer_template == "Notes: {notes}\n\n{question}"
    model.save_pretrained(legacy)  # saved again, in this release's format
    assert json.loads(path.read_text())["format_version"] == 2


def test_the_release_01_keywords_still_work_and_warn_naming_the_new_ones(base_folder, tmp_path, essay_text):
    CompressedMemoryModel.from_pretrained(base_folder, show_progress=False).save_pretrained(tmp_path / "ckpt")
    with pytest.warns(DeprecationWarning, match=r"from_pretrained\(memory=...\) is deprecated.*use checkpoint="):
        model = CompressedMemoryModel.from_pretrained(base_folder, memory=tmp_path / "ckpt", show_progress=False)
    bank = model.compress(essay_text[:600])
    with pytest.warns(DeprecationWarning, match=r"generate\(memory=...\).*use bank="):
        old = model.generate(model.prompt_ids("Why?"), memory=bank, max_new_tokens=3, do_sample=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = model.generate(model.prompt_ids("Why?"), bank=bank, max_new_tokens=3, do_sample=False)
    assert torch.equal(old, new)
    with pytest.warns(DeprecationWarning, match=r"answer\(memory=...\).*use bank="):
        assert model.answer("Why?", memory=bank, max_new_tokens=3) == model.answer("Why?", bank=bank, max_new_tokens=3)
    with pytest.raises(ValueError, match="both memory= and bank="):
        model.generate(model.prompt_ids("Why?"), memory=bank, bank=bank)
