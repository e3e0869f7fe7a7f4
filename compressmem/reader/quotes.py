"""Quotes: which sentence of a section a read's output was drawn from, and whether notes answer a question.

A small reader paraphrases, restates the question, or copies the section from its start instead of
quoting. Notes are therefore always whole sentences of the section: the sentence the output's own
words point to, or, when the output points nowhere, the section's sentence that matches the question
best. A sentence is kept only if it bears on the question (it holds one of the question's key terms,
or a key term of the notes so far, which is how a second hop follows the first), so a note always has
a source in the text and never carries a value the section does not hold next to what was asked.

Key terms are the words a question is about: names (capitalised words inside a sentence), numbers,
and the parts of hyphenated keys. Whether the notes answer the question is not decided here, by the
question's words, but by a judge of the answer written from them (`reader.judge`). The word lists are
English; other languages fall back to content-word overlap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"[^\W_][\w'’-]*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n|\n(?=\s*[A-Z0-9#*-])")
_REFUSAL = re.compile(
    r"\b(none|not (?:mentioned|stated|given|provided|available|known|specified|found|say|said|clear)|does not|"
    r"doesn't|do not know|don't know|no (?:information|mention|answer)|cannot|can't|unknown)\b",
    re.IGNORECASE,
)
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "mentioned",
        "provided",
        "text",
        "document",
        "context",
        "passage",
        "section",
        "according",
        "given",
        "following",
        "tell",
        "say",
        "says",
        "find",
        "list",
        "name",
        "one",
        "ones",
    ]
)
ALL_WORDS = frozenset({"all", "every", "each", "list"})


def normal(word: str) -> str:
    """A word as compared: lower case, a plural's final s dropped (numbers ~ number)."""
    word = word.lower()
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def content_words(text: str) -> set[str]:
    """The words of `text` that carry meaning: not function words, not one letter (digits count)."""
    return {normal(w) for w in _WORD.findall(text) if (len(w) > 1 or w.isdigit()) and w.lower() not in STOPWORDS}


def key_terms(text: str) -> set[str]:
    """The words `text` is about: numbers, names (capitalised, not first in a sentence) and hyphenated keys."""
    keys: set[str] = set()
    sentence_start = True
    for match in _TOKEN.finditer(text):
        token = match.group()
        parts = [p for p in re.split(r"[-'’]", token) if p]
        if any(c.isdigit() for c in token) or ("-" in token and len(parts) > 1):
            keys.update(normal(p) for p in parts if p.lower() not in STOPWORDS)
        elif token[0].isupper() and not sentence_start and token.lower() not in STOPWORDS and token != "I":
            keys.add(normal(parts[0]))
        end = match.end()
        rest = text[end : end + 2]
        sentence_start = bool(re.match(r"[.!?:]", rest)) or "\n" in rest
    return keys


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text` (blank-stripped, empty ones dropped)."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
    return out


def refuses(text: str) -> bool:
    """Whether `text` declines to answer ("NONE", "not mentioned", "I don't know", ...)."""
    return bool(_REFUSAL.search(text))


def asks_for_all(question: str) -> bool:
    """Whether the question asks for every match ("all", "every", "list"), so one found answer is not enough."""
    return bool(ALL_WORDS & {w.lower() for w in _WORD.findall(question)})


@dataclass(frozen=True)
class Quote:
    """A sentence of a section kept as a note: its span in the section's text, and whether the reader's own
    output pointed to it (`matched`) or the section's best match to the question stood in for that output."""

    start: int
    end: int
    matched: bool


def find_quote(
    output: str, section: str, question: str, notes: str, min_support: float, within: tuple[int, int] | None = None
) -> Quote | None:
    """The sentence of `section` to keep as a note after a read whose output was `output`, or None.

    A line of the output points to the sentence holding at least `min_support` of its new words (those not
    in the question); the best-supported line wins. An output that points nowhere (a restated question, the
    section copied from its start) is replaced by the sentence, among those bearing on the question
    (`bears_on`), with the most of the question's words. A refusal ("NONE", "the section does not answer")
    keeps nothing for a question without key terms; for one that names its key (a name, a number), a small
    model refuses the very section that holds the answer in other words, so the sentence of the section that
    names the key is kept all the same, and the judge of the answer decides. Either way the sentence is kept
    only if it bears on the question. With `within`, only sentences overlapping those characters of `section`
    are candidates (the block read, its neighbours' text around it completing the sentences cut at its edges).
    """
    declined = not output.strip() or output.lstrip().upper().startswith("NONE") or refuses(output)
    if declined and not key_terms(question):
        return None
    spans = sentences(section)
    if within is not None:
        spans = [(a, b) for a, b in spans if a < within[1] and b > within[0]]
    if not spans:
        return None
    texts = [content_words(section[a:b]) for a, b in spans]
    asked = content_words(question)
    pointed = [_pointed(line, spans, texts, asked) for line in output.splitlines() if not refuses(line)]
    pointed = [(support, i) for support, i in pointed if support >= min_support]
    for _, i in sorted(pointed, key=lambda p: -p[0]):
        if bears_on(section[slice(*spans[i])], question, notes):
            return Quote(*spans[i], matched=True)
    wanted = asked | key_terms(notes)
    bearing = [i for i in range(len(spans)) if bears_on(section[slice(*spans[i])], question, notes)]
    best = max(bearing, key=lambda i: len(wanted & texts[i]), default=None)
    return None if best is None or not wanted & texts[best] else Quote(*spans[best], matched=False)


def _pointed(line: str, spans: list[tuple[int, int]], texts: list[set[str]], asked: set[str]) -> tuple[float, int]:
    """(share of the line's new words in it, index) of the sentence a line of output points to."""
    new = content_words(line) - asked
    if not new:
        return 0.0, 0
    support = [len(new & words) / len(new) for words in texts]
    best = max(range(len(spans)), key=lambda i: (support[i], len(asked & texts[i])))
    return support[best], best


def bears_on(sentence: str, question: str, notes: str) -> bool:
    """Whether a sentence is about what was asked: it holds a key term of the question or of the notes so far
    (a second hop), or, for a question without key terms, two of its content words (half of them when it has
    fewer than four): a question worded unlike the text ("What number is needed to open the lighthouse
    vault?") shares its subject with the answer's sentence, not its other words. Whether the sentence answers
    the question is the judge's to decide, from the answer written with it."""
    words = content_words(sentence)
    keys = key_terms(question) | key_terms(notes)
    if keys:
        return bool(keys & words)
    asked = content_words(question)
    return bool(asked) and len(asked & words) >= min(2, len(asked) / 2)


def echoes(text: str, question: str) -> bool:
    """Whether `text` repeats at least 75% of the question's words besides its names and numbers, as an answer
    to it written by a small model does ("The passcode for the Norwick vault is 7920817.")."""
    other = content_words(question) - key_terms(question)
    return not other or len(other & content_words(text)) >= 0.75 * len(other)
