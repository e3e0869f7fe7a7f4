"""Scorers on hand-made predictions."""

import pytest

from compressmem.eval import exact_match, normalize_answer, score_answer, substring_match, substring_match_all, token_f1


def test_substring_match_is_case_insensitive_and_takes_any_answer():
    assert substring_match("The number is 4406527.", ["4406527"]) == 1.0
    assert substring_match("It is PARIS, France", ["london", "paris"]) == 1.0
    assert substring_match("The number is 440652.", ["4406527"]) == 0.0


def test_substring_match_all_gives_partial_credit():
    assert substring_match_all("ABCDE and FGHIJ", ["ABCDE", "FGHIJ", "KLMNO", "PQRST"]) == 0.5
    assert substring_match_all("nothing", ["ABCDE"]) == 0.0


def test_exact_match_normalises_like_squad():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel Tower in Paris", ["Eiffel Tower"]) == 0.0


def test_token_f1_by_hand():
    # prediction tokens: new york city ; gold: greenwich village new york city -> P=3/3, R=3/5, F1=0.75
    assert token_f1("New York City", ["Greenwich Village, New York City"]) == pytest.approx(0.75)
    assert token_f1("Berlin", ["Paris", "Berlin"]) == 1.0
    assert token_f1("a", ["Paris"]) == 0.0


def test_score_answer_uses_the_all_answers_metric_for_variable_tracking():
    answers = ["ABCDE", "FGHIJ"]
    assert score_answer("variable_tracking", "ABCDE", answers)["substring"] == 0.5
    assert score_answer("niah_single", "ABCDE", answers)["substring"] == 1.0
