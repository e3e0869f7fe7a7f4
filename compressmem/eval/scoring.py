"""Answer scoring: RULER's substring match, and SQuAD-style exact match and token F1 for QA."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from ..reader.quotes import refuses

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (the SQuAD/HotpotQA normalisation)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def substring_match(prediction: str, answers: Sequence[str]) -> float:
    """RULER's metric: 1.0 if any gold answer occurs in the prediction (case-insensitive)."""
    return float(any(answer.lower() in prediction.lower() for answer in answers))


def substring_match_all(prediction: str, answers: Sequence[str]) -> float:
    """RULER's metric for variable tracking: the fraction of gold answers that occur in the prediction."""
    return sum(answer.lower() in prediction.lower() for answer in answers) / len(answers)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    return float(any(normalize_answer(prediction) == normalize_answer(answer) for answer in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """The best token-overlap F1 between the normalised prediction and any gold answer."""
    return max(_f1(normalize_answer(prediction).split(), normalize_answer(answer).split()) for answer in answers)


def _f1(predicted: list[str], gold: list[str]) -> float:
    common = sum((Counter(predicted) & Counter(gold)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


ALL_ANSWERS_TASKS = frozenset({"variable_tracking", "niah_multivalue", "niah_multiquery"})
ABSENT_TASKS = frozenset({"absent"})
_NUMBER = re.compile(r"\d")


def says_not_found(prediction: str) -> bool:
    """Whether an answer declines ("Not found in the context.", "NONE", "not mentioned", ...) and names no number."""
    return refuses(prediction) and not _NUMBER.search(prediction)


def score_answer(task: str, prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """Every metric for one prediction; `substring` is the headline metric (all-answers for variable tracking and
    the multi-value needles; for `absent`, 1.0 when the answer says not found and names no number). `refused`:
    the answer says not found, right (on `absent`) or wrong (anywhere else, where it scores 0)."""
    refused = float(says_not_found(prediction))
    if task in ABSENT_TASKS:
        return {"substring": refused, "exact_match": refused, "f1": refused, "refused": refused}
    matcher = substring_match_all if task in ALL_ANSWERS_TASKS else substring_match
    correct = 0.0 if refused else matcher(prediction, answers)
    return {
        "substring": correct,
        "exact_match": exact_match(prediction, answers),
        "f1": token_f1(prediction, answers),
        "refused": refused,
    }
