"""Task generators: deterministic per seed, evidence where they say, the target length within a chunk."""

import json
import re
from pathlib import Path

import pytest

from compressmem.eval import TASKS, make_cases

HAYSTACK = (Path(__file__).resolve().parents[1] / "examples" / "long_document.txt").read_text(encoding="utf-8")


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cases(task, tokenizer, length, n=3, seed=0, hotpot=None):
    return make_cases(task, tokenizer, length, n, seed, haystack=HAYSTACK, hotpotqa_file=hotpot)


@pytest.mark.parametrize("task", [t for t in TASKS if t != "hotpotqa"])
@pytest.mark.parametrize("length", [512, 3000])
def test_haystack_tasks_are_seeded_and_hit_the_length(tokenizer, task, length):
    cases = _cases(task, tokenizer, length)
    assert cases == _cases(task, tokenizer, length)
    assert [c.context for c in cases] != [c.context for c in _cases(task, tokenizer, length, seed=1)]
    assert len({c.context for c in cases}) == len(cases)
    for case in cases:
        assert abs(_tokens(tokenizer, case.context) - length) <= 8


def test_a_context_longer_than_the_haystack_wraps_around(tokenizer):
    short = HAYSTACK[:3000]
    case = make_cases("niah_single", tokenizer, 4000, 1, 0, haystack=short)[0]
    assert abs(_tokens(tokenizer, case.context) - 4000) <= 8


def test_niah_single_evidence_is_the_needle(tokenizer):
    for case in _cases("niah_single", tokenizer, 1500, n=5):
        (start, end), = case.evidence
        needle = case.context[start:end]
        key = re.search(r"for (\S+) mentioned", case.question).group(1)
        assert f"magic numbers for {key} is: {case.answers[0]}." in needle
        assert case.context.count(case.answers[0]) == 1


def test_niah_multikey_hides_distractors_with_other_keys(tokenizer):
    for case in _cases("niah_multikey", tokenizer, 2000, n=5):
        (start, end), = case.evidence
        key = case.metadata["key"]
        assert f"for {key} is: {case.answers[0]}" in case.context[start:end]
        distractors = [case.context[a:b] for a, b in case.metadata["distractors"]]
        assert len(distractors) == 3
        assert all("special magic numbers for" in d and key not in d and case.answers[0] not in d
                   for d in distractors)


def test_variable_tracking_evidence_is_the_chain_in_order(tokenizer):
    for case in _cases("variable_tracking", tokenizer, 2000, n=5):
        statements = [case.context[a:b].strip() for a, b in case.evidence]
        names = case.answers
        assert len(statements) == len(names) == 5
        assert statements[0] == f"VAR {names[0]} = {case.metadata['value']}."
        assert statements[1:] == [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        assert [span[0] for span in case.evidence] == sorted(span[0] for span in case.evidence)
        assert str(case.metadata["value"]) in case.question


def test_variable_tracking_distractor_chains_stay_out_of_the_evidence(tokenizer):
    from compressmem.eval.variable_tracking import variable_tracking

    case = variable_tracking(tokenizer, HAYSTACK, 2000, 0, 0, hops=2, chains=2)
    statements = re.findall(r"VAR [A-Z]{5} = (?:VAR [A-Z]{5}|\d+)\.", case.context)
    evidence = [case.context[a:b].strip() for a, b in case.evidence]
    assert len(statements) == 6 and len(evidence) == 3
    outside = [s for s in statements if s not in evidence]
    assert len(outside) == 3 and not any(name in s for s in outside for name in case.answers)
    bound = [s for s in outside if s.split("= ")[1][0].isdigit()]
    assert len(bound) == 1 and str(case.metadata["value"]) not in bound[0]


def test_hotpotqa_keeps_gold_paragraphs_and_marks_supporting_sentences(tokenizer, hotpot_file):
    records = json.loads(hotpot_file.read_text())
    cases = _cases("hotpotqa", tokenizer, 600, n=4, hotpot=hotpot_file)
    assert cases == _cases("hotpotqa", tokenizer, 600, n=4, hotpot=hotpot_file)
    for case in cases:
        record = next(r for r in records if r["question"] == case.question)
        paragraphs = dict((title, sentences) for title, sentences in record["context"])
        expected = [paragraphs[title][i] for title, i in record["supporting_facts"]]
        assert sorted(case.context[a:b] for a, b in case.evidence) == sorted(expected)
        assert case.answers == (record["answer"],)
        assert abs(_tokens(tokenizer, case.context) - 600) <= 64
        assert case.context.count("Document ") == case.metadata["paragraphs"]


def test_hotpotqa_too_short_a_file_is_refused(tokenizer, hotpot_file):
    with pytest.raises(ValueError, match="fewer than the 100000"):
        _cases("hotpotqa", tokenizer, 100_000, n=1, hotpot=hotpot_file)


def test_shared_hotpotqa_builds_ruler_hqa(tokenizer):
    from compressmem.eval import default_data_dir

    folder = default_data_dir()
    if folder is None or not (folder / "hotpotqa_dev_60.json").is_file():
        pytest.skip("needs ../shared/data/hotpotqa_dev_60.json beside the project")
    case = make_cases("hotpotqa", tokenizer, 8192, 1, 0)[0]
    assert abs(_tokens(tokenizer, case.context) - 8192) <= 512 and len(case.evidence) >= 2


def test_bad_requests_say_what_is_wrong(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="Unknown task"):
        make_cases("niah", tokenizer, 1000, 1)
    with pytest.raises(ValueError, match="at least 64"):
        make_cases("niah_single", tokenizer, 10, 1, haystack=HAYSTACK)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_cases("hotpotqa", tokenizer, 1000, 1, hotpotqa_file=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q", "answer": "a"}]))
    with pytest.raises(ValueError, match="lacks HotpotQA fields"):
        make_cases("hotpotqa", tokenizer, 1000, 1, hotpotqa_file=bad)


def test_absent_asks_for_a_key_no_needle_has(tokenizer):
    for case in _cases("absent", tokenizer, 1500, n=4):
        key = case.metadata["key"]
        assert key in case.question and key not in case.context and case.answers == () and case.evidence == ()
        needles = re.findall(r"special magic numbers for (\S+) is: \d{7}\.", case.context)
        assert len(needles) == 4 and key not in needles


def test_multivalue_hides_every_value_of_one_key_and_multiquery_every_asked_key(tokenizer):
    for case in _cases("niah_multivalue", tokenizer, 1500):
        key = case.metadata["key"]
        assert len(case.answers) == 4 and len(case.evidence) == 4
        for value, (start, end) in zip(case.answers, case.evidence):
            assert f"for {key} is: {value}." in case.context[start:end]
    for case in _cases("niah_multiquery", tokenizer, 1500):
        keys = case.metadata["keys"]
        assert len(set(keys)) == 4 and all(key in case.question for key in keys)
        for key, value, (start, end) in zip(keys, case.answers, case.evidence):
            assert f"for {key} is: {value}." in case.context[start:end]
