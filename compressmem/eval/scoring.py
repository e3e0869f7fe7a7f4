"""Answer scoring: RULER's substring match, and SQuAD-style exact match and token F1 for QA."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

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


ALL_ANSWERS_TASKS = frozenset({"variable_tracking"})


def score_answer(task: str, prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """Every metric for one prediction; `substring` is the headline metric (all-answers for variable tracking)."""
    matcher = substring_match_all if task in ALL_ANSWERS_TASKS else substring_match
    return {"substring": matcher(prediction, answers), "exact_match": exact_match(prediction, answers),
            "f1": token_f1(prediction, answers)}
