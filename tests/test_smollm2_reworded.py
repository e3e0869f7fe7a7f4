"""The README's questions in other words, through the command line as a user asks them: every one is answered
right from the sentence that holds its answer, and the ones the document does not answer are not found."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "examples" / "long_document.txt"
QUESTIONS = json.loads((ROOT / "examples" / "reworded_questions.json").read_text(encoding="utf-8"))


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "compressmem.cli", *args, "--quiet"], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    return done.stdout


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    """The document compressed once (its semantic index is kept with it on the first question)."""
    path = tmp_path_factory.mktemp("reworded") / "doc.safetensors"
    _cli("compress", str(DOCUMENT), "-o", str(path))
    return path


def test_every_reworded_question_shares_few_words_with_its_answer_sentence():
    """The questions are reworded: none repeats the README's wording of its question."""
    readme = [item["question"] for item in json.loads((ROOT / "examples" / "questions.json").read_text())]
    assert len([item for item in QUESTIONS if item["answers"]]) >= 6
    assert not {item["question"] for item in QUESTIONS} & set(readme)


@pytest.mark.parametrize("item", QUESTIONS, ids=lambda item: item["question"])
def test_a_reworded_question_is_answered_right_or_not_found(bank, item):
    asked = json.loads(_cli("ask", "--context", str(bank), "--question", item["question"], "--json"))
    if not item["answers"]:
        assert not asked["found"] and asked["outcome"] == "not found" and asked["sources"] == [], asked
        return
    assert asked["found"] and any(answer.lower() in asked["answer"].lower() for answer in item["answers"]), asked
    text = DOCUMENT.read_text(encoding="utf-8")
    assert any(answer.lower() in text[s["start"]:s["end"]].lower() for s in asked["sources"] for answer in
               item["answers"]), "the answer's sentence is among its sources"
