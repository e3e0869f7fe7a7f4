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


def test_absent_is_right_only_when_it_says_not_found_and_names_no_number():
    assert score_answer("absent", "Not found in the context.", [])["substring"] == 1.0
    assert score_answer("absent", "The text does not mention it.", [])["substring"] == 1.0
    for invented in ("The special magic number for amber-anchor is 1234567.", "It is not 1234567."):
        assert score_answer("absent", invented, [])["substring"] == 0.0


def test_a_refusal_scores_nothing_on_a_task_with_an_answer_and_is_counted():
    refused = score_answer("niah_single", "Not found in the context.", ["4719283"])
    assert refused["substring"] == 0.0 and refused["refused"] == 1.0
    answered = score_answer("niah_single", "The number is 4719283.", ["4719283"])
    assert answered["substring"] == 1.0 and answered["refused"] == 0.0
    assert score_answer("niah_multivalue", "1111111 and 2222222", ["1111111", "2222222", "3333333", "4444444"]
                        )["substring"] == 0.5
