"""Answers a user can trust, on the real model: the README's questions through the command line, sources that
point at the needle, and "not found" (with nothing generated) when the context does not hold the answer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compressmem import CompressedMemoryModel, MemoryConfig
from compressmem.eval import make_cases
from compressmem.eval.scoring import says_not_found

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "examples" / "long_document.txt"


def _ask(question: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "compressmem.cli", "ask", "--context", str(DOCUMENT), "--question",
                           question, "--json", "--quiet"], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout)


@pytest.mark.parametrize("item", json.loads((ROOT / "examples" / "questions.json").read_text()),
                         ids=lambda item: item["question"])
def test_the_readme_questions_are_answered_from_the_sentences_that_hold_them(item):
    asked = _ask(item["question"])
    assert any(answer.lower() in asked["answer"].lower() for answer in item["answers"]), asked
    assert asked["found"] and asked["sources"]
    text = DOCUMENT.read_text(encoding="utf-8")
    for source in asked["sources"]:
        assert text[source["start"]:source["end"]] == source["text"], "offsets point into the user's file"
    assert any(answer in s["text"] for s in asked["sources"] for answer in item["answers"])


def test_a_question_the_document_does_not_answer_is_not_found():
    asked = _ask("What is the secret code for the harbour safe?")
    assert not asked["found"] and asked["sources"] == []
    assert asked["answer"] == MemoryConfig().prompts.not_found


def test_a_needle_answer_cites_the_needle(smollm2, haystack):
    model = CompressedMemoryModel(smollm2.model, smollm2.tokenizer, memory_config=MemoryConfig(),
                                  base_name=smollm2.base_name, show_progress=False)
    for case in make_cases("niah_multikey", smollm2.tokenizer, 4096, 2, haystack=haystack):
        answer = model.answer(case.question, context=case.context, max_new_tokens=32, return_sources=True)
        assert answer.found and case.answers[0] in answer.text
        (start, end), = case.evidence
        assert any(start <= s.start and s.end <= end and case.answers[0] in case.context[s.start:s.end]
                   for s in answer.sources), (answer.sources, case.context[start:end])


def test_an_absent_key_is_not_found_and_no_answer_is_generated(smollm2, haystack):
    model = CompressedMemoryModel(smollm2.model, smollm2.tokenizer, memory_config=MemoryConfig(),
                                  base_name=smollm2.base_name, show_progress=False)
    for case in make_cases("absent", smollm2.tokenizer, 4096, 2, haystack=haystack):
        answer = model.answer(case.question, context=case.context, max_new_tokens=32, return_sources=True)
        assert not answer.found and says_not_found(answer.text) and answer.trace.answer_prompt_ids is None
        trace = answer.trace
        assert trace.missing_terms or len(trace.blocks_read) > 1, "it reads past the first block before giving up"
        assert not trace.missing_terms or not trace.blocks_read, "a key the text never names needs no read"
