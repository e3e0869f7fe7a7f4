"""A bank saved with its gate index is answered by a new process without building the index again or writing
anything: the index kept with the bank (a file's or a folder's) is loaded, for the lexical and the key gate."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compressmem import ChunkingConfig, CompressionConfig, GateConfig, MemoryConfig, NotesConfig

from .conftest import tiny_wrapper

ROOT = Path(__file__).resolve().parents[1]
NOTES = NotesConfig(note_tokens=4)
CONFIGS = {
    "lexical": MemoryConfig(chunking=ChunkingConfig(64), gate=GateConfig("lexical"), notes=NOTES),
    "keys": MemoryConfig(
        chunking=ChunkingConfig(64),
        compression=CompressionConfig("select"),
        gate=GateConfig("attention", layers=(1, 2)),
        notes=NOTES,
    ),
}
QUESTION = "What is the essay about?"

# Run in a fresh process: answer from each bank, recording every gate index built or kept (a kept index is
# written with the bank), and every BM25 index built from the blocks.
ANSWER_IN_A_NEW_PROCESS = """
import json, sys
from transformers import AutoTokenizer
from compressmem import MemoryBank
from compressmem.embedded import embedded_model_folder
from compressmem.gate import LexicalIndex
from tests.conftest import tiny_wrapper
from tests.test_bank_reopen import CONFIGS, QUESTION

events = []
keep = MemoryBank.keep_derived
MemoryBank.keep_derived = lambda bank, name, *args, **kwargs: events.append("kept " + name) or keep(
    bank, name, *args, **kwargs)
build = LexicalIndex.build.__func__
LexicalIndex.build = classmethod(lambda cls, *args: events.append("built lexical") or build(cls, *args))
tokenizer = AutoTokenizer.from_pretrained(embedded_model_folder())
for kind, path in json.loads(sys.argv[1]):
    model = tiny_wrapper("llama", tokenizer, CONFIGS[kind])
    bank = MemoryBank.load(path)
    model.answer(QUESTION, bank=bank, max_new_tokens=3)
    events.append(f"{path}: " + ",".join(sorted(bank.store.derived_items())))
print(json.dumps(events))
"""


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_a_new_process_answers_from_a_saved_bank_without_building_or_writing_its_gate_index(
    tokenizer, essay_text, tmp_path
):
    text = essay_text[:3000]
    banks = []
    for kind, config in CONFIGS.items():
        model = tiny_wrapper("llama", tokenizer, config)
        bank = model.compress(text)
        model.answer(QUESTION, bank=bank, max_new_tokens=3)  # builds the gate index, kept with the bank
        bank.save(tmp_path / f"{kind}.safetensors")
        bank.save(tmp_path / f"{kind}-folder", folder=True)
        model.compress_stream([text], tmp_path / f"{kind}-streamed")
        banks += [
            (kind, str(tmp_path / name)) for name in (f"{kind}.safetensors", f"{kind}-folder", f"{kind}-streamed")
        ]
    before = _snapshot(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", ANSWER_IN_A_NEW_PROCESS, json.dumps(banks)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    events = json.loads(done.stdout.strip().splitlines()[-1])
    assert not [e for e in events if e.startswith(("kept", "built"))], events  # loaded, never built
    expected = {"lexical": "lexical", "keys": "keys-1-2"}
    assert events == [f"{path}: {expected[kind]}" for kind, path in banks]  # the index is there, loaded
    assert _snapshot(tmp_path) == before  # nothing written, nothing added


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_the_index_a_bank_is_saved_with_is_the_one_it_reopens_with(tokenizer, essay_text, tmp_path, kind):
    model = tiny_wrapper("llama", tokenizer, CONFIGS[kind])
    bank = model.compress(essay_text[:2000])
    model.answer(QUESTION, bank=bank, max_new_tokens=2)
    ((name, (tensors, metadata)),) = bank.store.derived_items().items()
    for path, folder in ((tmp_path / "bank.safetensors", False), (tmp_path / "bank", True)):
        bank.save(path, folder=folder)
        kept = type(bank).load(path).derived(name)
        assert kept is not None and kept[1] == metadata and kept[0].keys() == tensors.keys()
        assert all(kept[0][key].equal(tensors[key].cpu()) for key in tensors)
