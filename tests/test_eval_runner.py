"""The evaluation runner and `compressmem eval`, end to end on a tiny random model, two cases per task."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compressmem import ChunkingConfig, MemoryConfig, NotesConfig
from compressmem.eval import MODES, TASKS, markdown, run_eval, summarize

from .conftest import tiny_model, tiny_wrapper

HAYSTACK = Path(__file__).resolve().parents[1] / "examples" / "long_document.txt"
NOTES = NotesConfig(note_tokens=4, max_tokens=128)  # reads fit the 512-token window
CONFIG = MemoryConfig(chunking=ChunkingConfig(128), notes=NOTES)


@pytest.fixture(scope="module")
def records(tokenizer, hotpot_file):
    model = tiny_wrapper("llama", tokenizer, CONFIG, max_position_embeddings=512)
    return run_eval(model, TASKS, [300, 600], n=2, modes=MODES, seed=3, max_new_tokens=3, haystack=HAYSTACK,
                    hotpotqa_file=hotpot_file, memagent=MemoryConfig.memagent(100, notes=NOTES),
                    show_progress=False)


def test_every_task_length_case_and_mode_has_a_scored_record(records):
    assert len(records) == len(TASKS) * 2 * 2 * len(MODES)
    for record in records:
        if not record["skipped"]:
            assert 0.0 <= record["substring"] <= 1.0 and 0.0 <= record["f1"] <= 1.0
            assert record["seconds"] > 0 and record["peak_mib"] > 0


def test_memagent_reads_every_block_and_oracle_exactly_the_evidence(records):
    for record in records:
        if record["mode"] == "memagent":
            assert record["blocks_read"] == list(range(record["blocks"]))
            assert record["blocks"] == -(-record["context_tokens"] // 100)  # its own chunk size
            assert record["found"] is None  # MemAgent answers from its memory, unjudged
        if record["mode"] == "oracle" and record["task"] == "absent":
            assert record["skipped"] and "no evidence" in record["note"]
        elif record["mode"] == "oracle":  # the evidence blocks in order, until the notes cover the question
            read = record["blocks_read"]
            assert read and read == record["evidence_blocks"][:len(read)]
        if record["mode"] == "default":
            assert set(record["blocks_read"]) <= set(range(record["blocks"]))
            read = set(record["blocks_read"]) & set(record["evidence_blocks"])
            evidence = record["evidence_blocks"]
            assert record["evidence_recall"] == (len(read) / len(evidence) if evidence else None)


def test_full_context_is_skipped_with_a_note_beyond_the_window(records):
    full = [r for r in records if r["mode"] == "full"]
    assert all(r["skipped"] and "exceeds the model's 512-token window" in r["note"] for r in full if r["length"] == 600)
    assert not any(r["skipped"] for r in full if r["length"] == 300)


def test_summary_has_a_row_per_task_length_and_mode(records):
    rows = summarize(records)
    assert len(rows) == len(TASKS) * 2 * len(MODES)
    niah = {(r["length"], r["mode"]): r for r in rows if r["task"] == "niah_single"}
    assert niah[(600, "full")]["cases"] == 0 and niah[(600, "full")]["skipped"] == 2
    assert niah[(300, "oracle")]["evidence_recall"] > 0  # it stops once the notes cover the question
    table = markdown(rows)
    assert "cost of gate errors" in table and "| niah_single | 600 | full | skipped |" in table


def test_unknown_mode_is_refused(tokenizer):
    with pytest.raises(ValueError, match="Unknown modes"):
        run_eval(tiny_wrapper("llama", tokenizer, CONFIG), ["niah_single"], [300], 1, modes=["fast"])


def test_eval_command_writes_cases_summary_and_plots(tokenizer, tmp_path):
    base = tmp_path / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = tmp_path / "run"
    config = tmp_path / "config.json"
    CONFIG.save(config)
    subprocess.run([sys.executable, "-m", "compressmem.cli", "eval", "--model", str(base), "--task",
                    "niah_single,variable_tracking", "--lengths", "0.25k,300", "--n", "2", "--modes", "default,memagent",
                    "--config", str(config), "--memagent-chunk-size", "128", "--memagent-memory-tokens", "8",
                    "--max-new-tokens", "2",
                    "--haystack", str(HAYSTACK), "--out", str(out),
                    "--quiet"], capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 2 * 2 * 2 and {r["length"] for r in lines} == {256, 300}
    assert "variable_tracking" in (out / "summary.md").read_text()
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "time.png").stat().st_size > 1000
