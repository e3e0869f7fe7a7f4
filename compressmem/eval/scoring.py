"""Answer scoring: RULER's substring match, SQuAD-style exact match and token F1 for QA, and two checks of an
answer against its context: whether it declines (`says_not_found`) and whether it names a number or a name the
context does not hold (`invented`).

The rules here are the evaluation's own: nothing is imported from the reader it judges (`compressmem.reader`),
so a change to how the reader decides it has found an answer cannot change how that answer is scored.
"""

from __future__ import annotations

import re
import string
import unicodedata
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
    return max(
        (_f1(normalize_answer(prediction).split(), normalize_answer(answer).split()) for answer in answers), default=0.0
    )


def _f1(predicted: list[str], gold: list[str]) -> float:
    common = sum((Counter(predicted) & Counter(gold)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


ALL_ANSWERS_TASKS = frozenset({"variable_tracking", "niah_multivalue", "niah_multiquery"})
ABSENT_TASKS = frozenset({"absent"})
RELATED_ABSENT_TASKS = frozenset({"absent_related"})
_NUMBER = re.compile(r"\d")
_REFUSAL = re.compile(
    r"\b(?:none|nothing|unknown|unanswerable|not (?:found|mentioned|stated|given|provided|specified|available|known|"
    r"clear|included|listed|present|say|said|told|in the (?:text|context|document|passage))|"
    r"(?:does|did|do)(?: not|n't) (?:say|said|mention|state|specify|provide|contain|give|include|tell|know|have)|"
    r"(?:i|we) (?:do not|don't|cannot|can't) (?:know|tell|find|say|answer|determine)|"
    r"no (?:information|mention|answer|record|data|details?|indication)|there is no|"
    r"(?:cannot|can't|can not|unable to) (?:be )?(?:find|found|determine|determined|answer|answered|tell|say|know)|"
    r"(?:isn't|is not|wasn't|was not|aren't|are not) (?:mentioned|stated|given|provided|specified|known|found|said))\b",
    re.IGNORECASE,
)
# a multi-digit number, thousands separators allowed ("6,827,126" is 6827126)
_MULTI_DIGIT = re.compile(r"\d[\d,]*\d")
_WORDS = re.compile(r"[^\W\d_][\w'’-]*")
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+|\n\s*)[\"'“‘(\[*-]*\s*$")
# capitalised words that are not names even inside a sentence
_NOT_NAMES = frozenset(
    {"i", "i'm", "i've", "i'd", "i'll", "ok", "yes", "no", "not", "none", "answer", "context", "text"}
)
# words that open a bare answer without being names ("It was 1838.", "The miller.")
_OPENERS = frozenset(
    {"a", "an", "the", "it", "its", "it's", "he", "she", "they", "his", "her", "their", "this", "that", "these"}
    | {"those", "there", "here", "in", "on", "at", "by", "of", "to", "from", "for", "with", "about", "after"}
    | {"before", "since", "during", "only", "around", "approximately"}
)


def says_not_found(prediction: str) -> bool:
    """Whether an answer declines ("Not found in the context.", "NONE", "not mentioned", "I don't know",
    "does not say", "no information", ...) and names no number."""
    return bool(_REFUSAL.search(prediction)) and not _NUMBER.search(prediction)


def _normalised(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).replace("’", "'").lower().split())


def _numbers(text: str) -> set[str]:
    return {match.group().replace(",", "") for match in _MULTI_DIGIT.finditer(text)}


def _word(token: str) -> str:
    token = token.replace("’", "'").strip("'-").lower()
    return token[:-2] if token.endswith("'s") else token


def _names(prediction: str) -> list[str]:
    """Capitalised words of `prediction` that do not open a sentence (so names, not sentence starts); in a bare
    answer of at most three words ("Lisbon.", "Edith Stroud") every capitalised word."""
    found = []
    bare = len(prediction.split()) <= 3
    for match in _WORDS.finditer(prediction):
        token = match.group()
        opens = bool(_SENTENCE_START.search(prediction[: match.start()]))
        if not token[0].isupper() or (opens and (not bare or _word(token) in _OPENERS)):
            continue
        if _word(token) not in _NOT_NAMES:
            found.append(token)
    return found


def invented_terms(prediction: str, context: str) -> list[str]:
    """The numbers (of two digits or more) and names (capitalised words not first in their sentence) of
    `prediction` that `context` does not hold (case-insensitive, whitespace and Unicode normalised); empty for an
    answer that says not found."""
    if says_not_found(prediction):
        return []
    text = _normalised(context)
    numbers = _numbers(text)
    words = {_word(token) for token in _WORDS.findall(text)}
    missing = [number for number in sorted(_numbers(_normalised(prediction))) if number not in numbers]
    for name in _names(unicodedata.normalize("NFKC", prediction)):
        parts = [_word(part) for part in re.split(r"[-’']", name) if part]
        if _word(name) not in words and not all(part in words for part in parts):
            missing.append(name)
    return missing


def invented(prediction: str, context: str) -> bool:
    """Whether an answer presented as found (it does not say not found) names a number or a name that the context
    does not hold: what a reader made up rather than read."""
    return bool(invented_terms(prediction, context))


def score_answer(
    task: str,
    prediction: str,
    answers: Sequence[str],
    *,
    context: str | None = None,
    distractors: Sequence[str] = (),
) -> dict[str, float]:
    """Every metric for one prediction; `substring` is the headline metric (all-answers for variable tracking and
    the multi-value needles). `refused`: the answer says not found, right (on `absent` and `absent_related`) or
    wrong (anywhere else, where it scores 0). With the `context`, `invented` (1.0 when the answer names a number
    or a name the context does not hold) is reported too.

    `absent`: 1.0 when the answer says not found and names no number. `absent_related` (the context speaks of the
    asked key but never gives its value): 1.0 when the answer says not found, or, with the `context`, when it
    invents nothing and names no multi-digit number (the asked value is not in the text, so any number given for it
    is invented or borrowed from another key). `distractors`: values of other keys (the `niah_distractor` needles);
    an answer naming one of them scores 0 even when it names the right value too.
    """
    refused = float(says_not_found(prediction))
    extra = {} if context is None else {"invented": float(invented(prediction, context))}
    if task in ABSENT_TASKS or task in RELATED_ABSENT_TASKS:
        right = refused
        if task in RELATED_ABSENT_TASKS and not refused and context is not None:
            right = float(not extra["invented"] and not _MULTI_DIGIT.search(prediction))
        return {"substring": right, "exact_match": right, "f1": right, "refused": refused, **extra}
    matcher = substring_match_all if task in ALL_ANSWERS_TASKS else substring_match
    correct = 0.0 if refused else matcher(prediction, answers)
    if distractors and substring_match(prediction, distractors):
        correct = 0.0
    return {
        "substring": correct,
        "exact_match": exact_match(prediction, answers),
        "f1": token_f1(prediction, answers),
        "refused": refused,
        **extra,
    }
