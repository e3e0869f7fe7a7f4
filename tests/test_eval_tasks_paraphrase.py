"""The tasks that ask in words (`niah_paraphrase`, `niah_distractor`, `absent_related`), the scoring of refusals and
invented answers, the scorer's independence from the reader, and the hand-written natural questions."""

import ast
import json
import re
from pathlib import Path

import pytest

from compressmem.eval import make_cases, score_answer
from compressmem.eval.niah import PARAPHRASE_NEEDLES, PARAPHRASE_QUESTIONS, RELATED_WITHOUT_VALUE
from compressmem.eval.scoring import invented, invented_terms, says_not_found

ROOT = Path(__file__).resolve().parents[1]
HAYSTACK = (ROOT / "examples" / "long_document.txt").read_text(encoding="utf-8")
NATURAL = json.loads((ROOT / "benchmarks" / "natural_questions.json").read_text(encoding="utf-8"))
NEW_TASKS = ("niah_paraphrase", "niah_distractor", "absent_related")
# function words and question words: what a question may share with a needle besides its key
FUNCTION_WORDS = {"a", "an", "the", "is", "are", "was", "were", "be", "to", "of", "in", "on", "for", "by", "at", "it",
                  "its", "do", "does", "did", "i", "me", "my", "you", "your", "what", "which", "who", "whom", "whose",
                  "how", "why", "when", "where", "that", "this"}
SEVEN_DIGITS = re.compile(r"\b\d{7}\b")


def _cases(task, tokenizer, length=1500, n=4, seed=0):
    return make_cases(task, tokenizer, length, n, seed, haystack=HAYSTACK)


def _stems(text: str) -> set[str]:
    """Content words with their endings cut, so "opens" and "open" count as one word."""
    words = {w for w in re.findall(r"[a-z]+", text.lower()) if w not in FUNCTION_WORDS}
    return {re.sub(r"(ing|ed|es|s)$", "", w) for w in words}


@pytest.mark.parametrize("task", NEW_TASKS)
def test_new_tasks_are_deterministic_and_seeded(tokenizer, task):
    cases = _cases(task, tokenizer)
    assert cases == _cases(task, tokenizer)
    assert [c.context for c in cases] != [c.context for c in _cases(task, tokenizer, seed=1)]
    assert len({c.question for c in cases} | {c.context for c in cases}) > len(cases)


def test_every_paraphrase_pair_shares_the_key_and_no_other_content_word():
    key_stems = _stems("Reno vault")
    for needle in PARAPHRASE_NEEDLES + RELATED_WITHOUT_VALUE:
        for question in PARAPHRASE_QUESTIONS:
            needle_text = needle.format(key="Reno vault", value="6827126")
            shared = (_stems(question.format(key="Reno vault")) & _stems(needle_text)) - key_stems
            if needle in PARAPHRASE_NEEDLES:
                assert not shared, f"{question!r} and {needle!r} share {shared}"
    assert len(PARAPHRASE_NEEDLES) >= 4 and len(PARAPHRASE_QUESTIONS) >= 4


def test_niah_paraphrase_hides_one_reworded_needle(tokenizer):
    cases = _cases("niah_paraphrase", tokenizer, n=8)
    assert len({c.metadata["needle"].replace(c.answers[0], "").replace(c.metadata["key"], "") for c in cases}) > 1
    assert len({c.question.replace(c.metadata["key"], "") for c in cases}) > 1
    for case in cases:
        (start, end), = case.evidence
        key, value = case.metadata["key"], case.answers[0]
        assert key in case.question and key in case.context[start:end] and value in case.context[start:end]
        assert case.context.count(value) == 1
        assert not (_stems(case.question) & _stems(case.metadata["needle"])) - _stems(key)


def test_niah_distractor_hides_every_vault_with_its_own_value(tokenizer):
    for case in _cases("niah_distractor", tokenizer, length=2000):
        key, value = case.metadata["key"], case.answers[0]
        (start, end), = case.evidence
        assert key in case.question and key in case.context[start:end] and value in case.context[start:end]
        values = [value, *case.metadata["distractor_values"]]
        assert len(values) == 4 and len(set(values)) == 4
        assert len(set(case.metadata["distractor_keys"]) | {key}) == 4
        for other_key, other_value, (a, b) in zip(
            case.metadata["distractor_keys"], case.metadata["distractor_values"], case.metadata["distractors"]
        ):
            assert other_key in case.context[a:b] and other_value in case.context[a:b] and key not in case.context[a:b]
        # the needles share one wording: with keys and values taken out they are the same sentence
        shapes = {case.context[a:b].strip().replace(k, "K").replace(v, "V") for k, v, (a, b) in zip(
            [key, *case.metadata["distractor_keys"]], values, [case.evidence[0], *case.metadata["distractors"]])}
        assert len(shapes) == 1


def test_absent_related_speaks_of_the_key_but_never_gives_its_value(tokenizer):
    for case in _cases("absent_related", tokenizer, length=2000):
        key = case.metadata["key"]
        (start, end), = case.evidence
        related = case.context[start:end]
        assert case.answers == () and key in case.question and key in related
        assert case.context.count(key) == 1 and not SEVEN_DIGITS.search(related)
        assert set(SEVEN_DIGITS.findall(case.context)) == set(case.metadata["distractor_values"])


def test_refusals_are_recognised():
    for text in ("Not found in the context.", "NONE", "The text does not mention it.", "I don't know.",
                 "The document does not say.", "There is no information about the Reno vault.",
                 "It is not stated in the context.", "Unknown."):
        assert says_not_found(text), text
    for text in ("The code is 6827126.", "It is not 6827126.", "Eldermoor", "The Reno vault opens with 6827126."):
        assert not says_not_found(text), text


def test_an_invented_number_or_name_is_flagged_and_a_grounded_answer_is_not():
    context = "Mara Quill was born in the town of Eldermoor. The combination that unlocks the Reno vault is 6827126."
    assert invented("The code is 6827127.", context) and invented_terms("The code is 6827127.", context) == ["6827127"]
    assert invented("She was born in Lisbon.", context) and invented("Lisbon.", context)
    assert invented("It is not 1234567.", context)
    for grounded in ("The code is 6827126.", "She was born in Eldermoor.", "Eldermoor", "Mara Quill's town.",
                     "The code is 6,827,126.", "Not found in the context.", "It opens with 7 digits."):
        assert not invented(grounded, context), grounded


def test_score_answer_reports_refused_and_invented_with_the_context():
    context = "The combination that unlocks the Reno vault is 6827126. The Selby vault responds only to 1111111."
    right = score_answer("niah_paraphrase", "6827126", ["6827126"], context=context)
    assert right == {"substring": 1.0, "exact_match": 1.0, "f1": 1.0, "refused": 0.0, "invented": 0.0}
    made_up = score_answer("niah_paraphrase", "The code is 5555555.", ["6827126"], context=context)
    assert made_up["substring"] == 0.0 and made_up["invented"] == 1.0
    refused = score_answer("niah_paraphrase", "Not found in the context.", ["6827126"], context=context)
    assert refused["substring"] == 0.0 and refused["refused"] == 1.0 and refused["invented"] == 0.0
    assert "invented" not in score_answer("niah_single", "6827126", ["6827126"])  # old callers: no context
    assert score_answer("natural", "Eldermoor", [], context=context)["f1"] == 0.0  # no gold answer: nothing to match
    both = score_answer("niah_distractor", "6827126 or 1111111", ["6827126"], context=context, distractors=["1111111"])
    assert both["substring"] == 0.0


def test_absent_related_accepts_a_refusal_or_a_grounded_answer_and_no_code():
    context = "The code of the Reno vault was changed last spring, and only its keeper knows it. " \
              "The Selby vault responds only to 1111111."

    def right(prediction):
        return score_answer("absent_related", prediction, [], context=context)["substring"]

    assert right("Not found in the context.") == 1.0
    assert right("Only its keeper knows it; it was changed last spring.") == 1.0
    assert right("The code is 4719283.") == 0.0  # invented
    assert right("The code is 1111111.") == 0.0  # another vault's
    assert right("Not found in the context.") == 1.0 and right("Ask Lisbon.") == 0.0


def _imported_modules(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            found += [f"{'.' * node.level}{node.module or ''}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return found


def test_scoring_and_the_natural_questions_benchmark_do_not_import_the_reader():
    for path in (ROOT / "compressmem" / "eval" / "scoring.py", ROOT / "benchmarks" / "natural_questions.py"):
        modules = _imported_modules(path)
        assert modules and not [m for m in modules if "reader" in m], path


def test_natural_questions_quote_the_document_and_answer_from_their_evidence():
    answerable = [q for q in NATURAL if q["answers"]]
    unanswerable = [q for q in NATURAL if not q["answers"]]
    assert len(answerable) >= 30 and len(unanswerable) >= 6
    assert len({q["question"] for q in NATURAL}) == len(NATURAL)
    for item in NATURAL:
        assert set(item) == {"question", "answers", "evidence"}
        assert HAYSTACK.count(item["evidence"]) == 1, item["evidence"]
    for item in answerable:
        assert any(answer.lower() in item["evidence"].lower() for answer in item["answers"]), item["question"]
        # asked in other words: the question does not copy its evidence sentence
        assert item["question"].rstrip("?") not in item["evidence"]
