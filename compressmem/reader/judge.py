"""Judges: whether a generated answer may be presented as found.

The reader writes an answer from its notes after each read that added one, and a judge decides whether
that answer is what the notes say. A small model writes fluent inventions ("The Reno vault is a
fictional world in the Star Wars franchise") from notes that hold the right sentence, and answers
questions the notes do not answer from the words they share; neither may reach a user as found.

- `GroundingJudge` (the default): what the answer asserts must be in the notes. Its numbers and names
  must occur in the notes (or the question), and most of the content words it adds to the question
  must occur in the notes; an answer that declines, or adds nothing the question did not say, is not an
  answer. It needs no model, so its cost is nil and its errors are the same for every model.
- `ModelJudge`: the model's own yes/no judgement of the answer against the notes, the probability of
  "yes" against a threshold. It is used only for a model that passes `calibrate` on labelled notes
  (`CALIBRATION`); a model that fails falls back to the grounding check, and the trace says why.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..hf.tokens import chat_text
from .quotes import STOPWORDS, asks_for_all, content_words, key_terms, normal, refuses, sentences

_NUMBER_NOUNS = "numbers?|digits?|figures?|(?:pass)?codes?|pins?|combinations?|amount|sum|price|cost|total|count|age"
_NUMBER_QUESTION = re.compile(
    rf"^\W*(?:how (?:many|much)|(?:what|which)\s+(?:[\w'’]+\s+){{0,3}}?(?:{_NUMBER_NOUNS}))\b", re.I
)
_YEAR_QUESTION = re.compile(r"^\W*(?:in |by )?(?:what|which) year\b", re.I)
_YEAR = re.compile(r"1[0-9]{3}|20[0-9]{2}")
FITS = {  # what a value of each kind of question looks like (values as `content_words` gives them)
    "number": str.isdigit,
    "year": lambda value: bool(_YEAR.fullmatch(value)),
    "name": lambda value: not value.isdigit(),
}
_NAME_QUESTION = re.compile(r"^\W*(?:who|whom|whose)\b|\b(?:by|with|to|from|of) whom\b", re.I)
_PREPOSITIONS = frozenset(
    [
        "near",
        "beside",
        "behind",
        "beyond",
        "under",
        "across",
        "along",
        "around",
        "within",
        "without",
        "toward",
        "towards",
        "upon",
        "onto",
        "among",
        "amid",
        "against",
        "through",
        "throughout",
        "past",
        "inside",
        "outside",
        "underneath",
        "beneath",
        "opposite",
        "via",
        "per",
    ]
)
_HYPHENATED = re.compile(r"[^\W_]+(?:-[^\W_]+)+")
_CAPITALISED = re.compile(r"\b([A-Z][a-z]+)(?:['’]s\b)?")
_OPENING_NAME = re.compile(r"(?:^|[.!?]\s+)([A-Z][a-z]+)\s+([A-Z][a-z]+)")
COPIED = 2 / 3  # share of a notes sentence's content words an answer holds in order to be a copy of it (`edits`)
MAX_ADDED = 2  # words of its own (not the question's or the notes') that make a copied note an answer the notes lack
RUN = 3  # words of a note's sentence a question repeats in order before naming another thing (`_other_object`)
MIN_SUPPORT = 0.6  # share of an answer's new content words the notes must hold (benchmarks/RESULTS.md)


@dataclass(frozen=True)
class Verdict:
    """A judge's decision on one answer: `grounded` (it may be presented as found), why, and which judge.
    `quote`: for an answer that is not grounded but gives a number or name the notes hold and the question does
    not (the small model found the value and dressed it in words of its own), the notes' sentences holding it,
    to give instead as an extractive answer, marked as a quote."""

    grounded: bool
    reason: str
    judge: str
    quote: str | None = None
    quotable: bool = False  # the answer failed on its own words, not on what the notes speak of: see `_stated`


@runtime_checkable
class Judge(Protocol):
    """Decides whether an answer written from `notes` may be presented as found."""

    name: str

    def judge(self, question: str, notes: str, answer: str) -> Verdict: ...


class GroundingJudge:
    """An answer is grounded when the notes hold what it asserts:

    - the notes speak of every name the question gives (notes about the Tarn vault do not answer a question
      about the Reno vault), and every number and name the answer gives occurs in them;
    - it adds something from the notes to the question: at least `min_support` of the content words it
      adds to the question occur in the notes, and it gives a number when the notes give one the question
      does not ("The Isley vault is the sequence which releases the Isley vault" drops the code);
    - at least half of the question's words it repeats occur in the notes (it speaks of what they speak of),
      and, when the question has two words or more besides its names and numbers, the answer or the notes hold
      one of them (what was asked about: an answer about Mara Quill's birthplace does not answer a question about
      her boat's colour).

    An answer that declines (and gives no value of the notes), or restates the question, asserts nothing.
    An answer that fails only on its own words (invented names or padding around a number or name the notes
    gave it) carries `Verdict.quote`: the notes' sentences that hold that value, which the reader gives
    instead, as a quote."""

    name = "grounding"

    def __init__(self, min_support: float = MIN_SUPPORT) -> None:
        self.min_support = min_support

    def judge(self, question: str, notes: str, answer: str) -> Verdict:
        verdict = self._verdict(question, notes, answer)
        if verdict.grounded or verdict.quote is not None or not verdict.quotable:
            return verdict
        return dataclasses.replace(verdict, quote=_stated(notes, question))

    def _verdict(self, question: str, notes: str, answer: str) -> Verdict:
        held, asked, said = content_words(notes), content_words(question), content_words(answer)
        if not answer.strip() or (refuses(answer) and not (key_terms(answer) & held) - asked):
            return Verdict(False, "the answer declines", self.name, quotable=True)
        topic = asked - key_terms(question)  # one such word is mostly the verb ("Where does X come from?")
        if len(topic) > 1 and not topic & (held | said):
            return Verdict(False, f"neither it nor the notes speak of {', '.join(sorted(topic))}", self.name)
        other = _other_kind(question, notes) or _other_object(question, notes)
        if other:
            return Verdict(False, f"the question asks of the {other[0]}, the notes speak of the {other[1]}", self.name)
        if key_terms(question) - held:
            absent = ", ".join(sorted(key_terms(question) - held))
            return Verdict(False, f"the notes do not speak of {absent}, which the question names", self.name)
        unnamed = _full_names(question, asked=True) - _full_names(notes)
        if unnamed:
            absent = ", ".join(sorted(" ".join(name) for name in unnamed))
            return Verdict(False, f"the notes do not name {absent}, whom the question names", self.name)
        named = key_terms(answer) | _opening_names(answer)
        values = (named & held) - asked  # numbers and names the notes gave it
        kind = asks_for(question)
        if kind:
            values = {value for value in values if FITS[kind](value)}
        repeated = said & asked
        if repeated and len(repeated & held) < len(repeated) / 2:  # its own wording of the question, around a value
            unheld = ", ".join(sorted(repeated - held))
            quote = _holding(notes, values, question) if values else None
            return Verdict(False, f"it speaks of {unheld}, which the notes do not", self.name, quote, quotable=True)
        if kind and not values:
            why = f"the question asks for a {kind}; the answer gives none of the notes'"
            if named - held:
                why += f" (it gives {', '.join(sorted(named - held))}, which they do not hold)"
            return Verdict(False, why, self.name, quotable=True)
        apart = _apart(notes, values, said & asked & held)
        if apart:
            why = f"the notes give {', '.join(sorted(values))} in sentences that do not speak of {', '.join(apart)}"
            return Verdict(False, why, self.name)
        if not _on_topic(notes, values, question, said):
            why = f"the notes give {', '.join(sorted(values))} in sentences that do not speak of what the question asks"
            return Verdict(False, why, self.name)
        changed = edits(notes, question, answer)
        if changed.swapped:
            why = f"it retells a sentence of the notes with {', '.join(changed.swapped)} in place of its own words"
            return Verdict(False, why, self.name)
        unknown = sorted(named - held)
        new = said - asked
        support = len(new & held) / len(new) if new else 0.0
        if unknown or (support < self.min_support and not values):
            why = (
                f"names or numbers not in the notes: {', '.join(unknown)}"
                if unknown
                else f"{support:.0%} of its new words are in the notes (not: {', '.join(sorted(new - held)[:6])})"
            )
            quote = _holding(notes, values, question) if values or kind else _naming(notes, new & held, question, said)
            return Verdict(False, why, self.name, quote, quotable=True)
        if not new & held:
            return Verdict(False, "it adds nothing from the notes to the question", self.name)
        if len(changed.added) >= MAX_ADDED:
            why = f"it adds {', '.join(changed.added)} to a sentence of the notes, which the notes do not say"
            return Verdict(False, why, self.name, quotable=kind in ("number", "year"))  # `_stated` finds the value
        overlap = {line: len(new & content_words(line)) for line in notes.splitlines()}
        most = max(overlap.values(), default=0)
        drawn = [line for line, shared in overlap.items() if shared and shared == most]  # the lines it retells
        dropped = {n for line in drawn for n in _numbers(line) - asked if n not in said}
        if dropped and kind != "name" and not _numbers(answer) - asked:
            lines = [line for line in drawn if _numbers(line) & dropped]
            why = f"it leaves out the number the notes give ({', '.join(sorted(dropped))})"
            return Verdict(False, why, self.name, " ".join(lines) or None)
        if values and support < self.min_support:
            given = ", ".join(sorted(values))
            why = f"only {support:.0%} of its new words are in the notes, but it gives their {given}"
            return Verdict(False, why, self.name, _holding(notes, values, question))
        return Verdict(True, f"{support:.0%} of the words it adds to the question are in the notes", self.name)


def asks_for(question: str) -> str | None:
    """What kind of value the question asks for, where its words say so: "number" (how many, how much, what
    number), "year" (which year: a four-digit one), "name" (who, whom, whose), else None (what, where, why, how:
    anything may answer)."""
    if _NUMBER_QUESTION.search(question):
        return "number"
    if _YEAR_QUESTION.search(question):
        return "year"
    if _NAME_QUESTION.search(question):
        return "name"
    return None


def _on_topic(notes: str, values: set[str], question: str, said: set[str]) -> bool:
    """Whether the sentences of `notes` that give the answer's `values` speak of what the question asks: they share
    a word of the question besides its names ("Who cast the copper bells?" is not answered by "Mara Quill was born
    in Eldermoor"). A question with one such word (mostly its verb: "Where does Mara Quill come from?") may be
    answered in other words, when the sentence the answer retells names every name the question gives ("She was
    born in the town of Eldermoor"), not by one on something else ("Eldermoor is famous for its copper bells")."""
    names = key_terms(question)
    topic = content_words(question) - names
    if not values or not topic:
        return True
    noted = [content_words(notes[a:b]) for a, b in sentences(notes)]
    giving = [words for words in noted if words & values]
    if giving and topic & set().union(*giving):
        return True
    drawn = max(giving, key=lambda words: len(words & said), default=set())  # the sentence the answer retells
    return len(topic) == 1 and bool(names) and names <= drawn


def _stated(notes: str, question: str) -> str | None:
    """For a question that asks for a number or a year and names what it asks of ("What figures give access to
    the Bellmont vault?"), the one line of `notes` that names all of it and gives one such value the question
    does not ("Staff were told that the Bellmont vault responds only to 5825163."), or None: given as a quote when
    the small model's answer lost the value in words of its own. Two such lines, a line without such a value (for a
    number, a year is not one: "The Reno vault was built in 1901" gives no code), or a question naming nothing (whose
    subject a line may share only in words) give None."""
    kind, names = asks_for(question), key_terms(question)
    if kind not in ("number", "year") or not names:
        return None
    asked = content_words(question)
    lines = [line for line in notes.splitlines() if names <= content_words(line)]
    fits = FITS[kind] if kind == "year" else lambda value: value.isdigit() and not _YEAR.fullmatch(value)
    giving = [line for line in lines if len({v for v in _numbers(line) - asked if fits(v)}) == 1]
    return giving[0] if len(giving) == 1 and len(lines) == 1 else None


def extract(question: str, notes: str) -> str | None:
    """The note to give as a quote when no answer written from the notes was grounded (the small model garbled
    what one note says: "Sylvester Merriman" for its "Silas Merriman"), or None. It is the one line of the notes
    that speaks most of what the question asks (more of its words besides its names than any other line, and two
    at least where it has two), names every name, number and full name the question gives, and holds a value of
    the kind the question asks for (`asks_for`: a name of its own for "who", a number for "how many" (a year is
    none), a year for "which year"). None for a question naming nothing (a line may share its subject only in
    words), a tie, a first hop (a line giving a name another note speaks of: "Mara Quill was born in Eldermoor"
    beside "Eldermoor is famous for its copper bells", asked what the town where she was born is known for), a line
    that only puts a name to the question's own words (the same note alone: the hop, not its end), and notes on
    another kind of thing (`_other_kind`, `_other_object`). A question asking for all matches gets every line
    giving a value for one of its keys (`_every`)."""
    names = key_terms(question)
    if not names or _other_kind(question, notes) or _other_object(question, notes):
        return None
    if asks_for_all(question):
        return _every(question, notes)
    topic = content_words(question) - names
    shared = {line: len(topic & content_words(line)) for line in notes.splitlines() if line.strip()}
    most = max(shared.values(), default=0)
    best = [line for line, count in shared.items() if count == most]
    if most < min(2, len(topic)) or len(best) != 1:  # one word in common ("town") is too little to go on
        return None
    line = best[0]
    if not names <= content_words(line) or _full_names(question, asked=True) - _full_names(line):
        return None
    named = key_terms(line) | _opening_names(line)
    hop = named - names
    if (
        any(hop & key_terms(other) for other in shared if other != line)
        or not content_words(line) - topic - names - hop
    ):
        return None  # a first hop: another note speaks of the name it gives, or it gives a name and nothing more
    kind = asks_for(question)
    if kind:
        fits = FITS[kind] if kind != "number" else lambda value: value.isdigit() and not _YEAR.fullmatch(value)
        if not any(fits(value) for value in named - content_words(question)):
            return None
    return line


def _every(question: str, notes: str) -> str | None:
    """For a question asking for all matches ("What are all the special magic numbers for fabled-canyon and
    quiet-jackal?"), the lines of `notes` naming one of its keys whole (every part of a hyphenated key:
    "hollow-falcon" does not name "hollow-meadow") and giving a value of their own (a number or name the question
    does not give), joined; None when no line does."""
    asked = content_words(question)
    keys = [{normal(part) for part in key.split("-")} for key in _HYPHENATED.findall(question)]
    keys += [{name} for name in key_terms(question) if not any(name in key for key in keys)]
    lines = [
        line
        for line in notes.splitlines()
        if any(key <= content_words(line) for key in keys) and (key_terms(line) | _opening_names(line)) - asked
    ]
    return " ".join(lines) or None


@dataclass(frozen=True)
class Edits:
    """What an answer changed in the sentence of the notes it copies (`edits`): `swapped`, words of its own in
    place of the sentence's, where they are words of the question the notes lack ("The lighthouse keeper was paid
    34 shillings a month" from "The town clerk was paid 34 shillings a month" answers for the lighthouse keeper
    what the notes say of the clerk) or names and numbers other than the sentence's ("Rowan Redfern first proposed
    repairs to the village green" from "It was Osric Redfern who first proposed repairs to the village green");
    `added`, words it adds that are neither the question's nor the notes' ("The lighthouse's original owner, Osric
    Redfern, ..."). Words of the question added around the copy ("27 letters written by Silas Kettering" from "27
    letters from Silas Kettering") are neither."""

    swapped: list[str]
    added: list[str]


def edits(notes: str, question: str, answer: str) -> Edits:
    """How `answer` changed the sentence of `notes` it copies (`Edits`). A copy is an answer holding, in order, at
    least `COPIED` of the content words of the notes' sentence it shares most with (and four or more of them); an
    answer in words of its own changes nothing here and is left to the other checks."""
    held, asked = content_words(notes), content_words(question)
    words = _content_sequence(answer)
    best = max(
        (_content_sequence(notes[a:b]) for a, b in sentences(notes)),
        key=lambda line: len(set(line) & set(words)),
        default=[],
    )
    matcher = difflib.SequenceMatcher(a=words, b=best, autojunk=False)
    if len(best) < 4 or sum(block.size for block in matcher.get_matching_blocks()) < COPIED * len(best):
        return Edits([], [])
    named, copied = key_terms(answer) | _opening_names(answer), set(best)
    swapped, added = set(), set()
    for tag, a, b, c, d in matcher.get_opcodes():
        own = words[a:b]
        if tag == "replace":
            subject = {w for w in own if w in asked and not _akin(w, held)}
            swapped |= subject if len(subject) > 1 else set()  # one word is mostly a verb retold ("home" for "born")
            if set(best[c:d]) & (key_terms(notes) | _numbers(" ".join(best[c:d]))):
                swapped |= {w for w in own if w in named and w not in copied}
        if tag in ("replace", "delete"):
            added |= {w for w in own if w not in asked and not _akin(w, held)}
    return Edits(sorted(swapped), sorted(added))


def _content_sequence(text: str) -> list[str]:
    """The content words of `text` in order (as `content_words` gives them)."""
    return [normal(w) for w in re.findall(r"\w+", text) if normal(w) in content_words(w)]


def _akin(word: str, words: set[str]) -> bool:
    """Whether `words` hold `word` or a word of its family: one starting with all of it but its last two letters,
    and at least its first four ("slow": "slowly"; "keeper": "keep"; not "lighthouse": "light")."""
    stem = word[: max(4, len(word) - 2)]
    return any(other.startswith(stem) for other in words)


def _apart(notes: str, values: set[str], restated: set[str]) -> list[str]:
    """The words of the question that an answer repeats and the notes hold, but not in the sentences that give
    the answer's `values`: an answer that joins one sentence's value to another's subject ("the lighthouse
    keeper was paid 34 shillings" from "the lighthouse vault ..." and "the town clerk was paid 34 shillings")."""
    if not values:
        return []
    giving = [content_words(notes[a:b]) for a, b in sentences(notes)]
    giving = [words for words in giving if words & values]
    return sorted(restated - set().union(*giving)) if giving else []


def _opening_names(text: str) -> set[str]:
    """Names that open a sentence, which `key_terms` cannot tell from a capitalised first word: the first word of
    two capitalised ones ("Sylvester Merriman, the postmistress, ..."), compared as `content_words` gives it."""
    return {
        normal(first)
        for first, _ in _OPENING_NAME.findall(text)
        if first.lower() not in STOPWORDS and first not in ("I", "It", "In", "On", "At", "As")
    }


def _full_names(text: str, asked: bool = False) -> set[tuple[str, str]]:
    """Adjacent pairs of capitalised words in `text` ("Tilda Kettering"), compared as `content_words` gives them
    (a possessive's "'s" dropped). A question's (`asked`) leave out its opening word ("Where Mara ..."), so that
    notes naming "Tilda Carrow" and "Jonah Kettering" do not name the question's "Tilda Kettering"."""
    pairs = set()
    for line in text.splitlines():
        for first, second in itertools.pairwise(_CAPITALISED.finditer(line)):
            if line[first.end() : second.start()].strip() or (asked and first.start() == 0):
                continue
            if first.group(1).lower() not in STOPWORDS and second.group(1).lower() not in STOPWORDS:
                pairs.add((normal(first.group(1)), normal(second.group(1))))
    return pairs


def _numbers(text: str) -> set[str]:
    """The numbers among `text`'s key terms."""
    return {term for term in key_terms(text) if term.isdigit()}


def _other_kind(question: str, notes: str) -> tuple[str, str] | None:
    """A noun the question and the notes share under different words right before it, the question's word
    nowhere in the notes ("the harbour vault" asked, "the lighthouse vault" noted): (asked, noted), else None."""
    held = content_words(notes)
    noted = _pairs(notes)
    for before, noun in _pairs(question):
        if noun in held and before not in held:
            others = [b for b, n in noted if n == noun and b != before]
            if others:
                return f"{before} {noun}", f"{others[0]} {noun}"
    return None


def _other_object(question: str, notes: str) -> tuple[str, str] | None:
    """A sentence of the notes that says what the question asks of something else: the question repeats `RUN` of
    its content words in order (not names: what is said of them), then names a thing the notes lack where the
    sentence names another ("Who first proposed repairs to the lighthouse?" against "It was Osric Redfern who first
    proposed repairs to the village green"): (asked, noted), else None. Fewer words in common are mostly a
    paraphrase sharing its subject ("the combination of the lighthouse safe" against "the secret code for the
    lighthouse vault")."""
    held, asked, names = content_words(notes), _content_sequence(question), key_terms(question) | key_terms(notes)
    for a, b in sentences(notes):
        line = _content_sequence(notes[a:b])
        for i in range(RUN, len(asked)):
            run = asked[i - RUN : i]
            if _akin(asked[i], held) or set(run) & names:
                continue
            for j in range(len(line) - RUN):
                if all(_akin(word, {noted}) for word, noted in zip(run, line[j : j + RUN])):
                    return " ".join(asked[i - RUN : i + 1]), " ".join(line[j : j + RUN + 1])
    return None


def _pairs(text: str) -> list[tuple[str, str]]:
    """Adjacent pairs of content words of `text` (compared as `content_words` gives them), the second not a
    preposition ("good condition near" and "brass scales near" share no noun)."""
    pairs = []
    for a, b in itertools.pairwise(re.findall(r"[\w'’-]+", text)):
        x, y = content_words(a), content_words(b)
        if x and y and b.lower() not in _PREPOSITIONS and not any(c.isdigit() for c in a + b):
            pairs.append((next(iter(x)), next(iter(y))))
    return pairs


def _holding(notes: str, values: set[str], question: str) -> str | None:
    """The lines of `notes` that hold any of `values` (words as `content_words` gives them) and one of the
    question's words besides its names (what it asks of: a note on Mara Quill's birth does not answer where
    she is buried), or None; None too when the sentences giving `values` leave out a word of the question that
    the notes hold elsewhere (they speak of something else)."""
    topic = content_words(question) - key_terms(question)
    lines = [line for line in notes.splitlines() if values & content_words(line)]
    lines = [line for line in lines if not topic or topic & content_words(line)]
    if not lines or _apart(notes, values, content_words(question) & content_words(notes)):
        return None
    return " ".join(lines)


def _naming(notes: str, words: set[str], question: str, said: set[str]) -> str | None:
    """For an answer that gives no name or number: the lines of `notes` holding the `words` it drew from them and
    every name the question gives ("What job did Bram Redfern do?": "Bram Redfern, the surveyor, ..."), or None.
    None too when the answer repeats a word of what the question asks (not a name) that the notes lack: "Mara Quill
    is buried in Eldermoor" from a note on her birth says what the question asks of, and the notes do not; and when
    a word of the question it repeats is in the notes, but not in the lines holding `words` (a question word it
    leaves alone may be elsewhere in the notes: "hold" in "The archive holds 30 letters")."""
    asked, names = content_words(question), key_terms(question)
    if not words or not names or (said & asked) - names - content_words(notes):
        return None
    lines = [line for line in notes.splitlines() if words & content_words(line) and names <= content_words(line)]
    if not lines or _apart(notes, words, said & asked & content_words(notes)):
        return None
    return " ".join(lines)


JUDGE_PROMPT = (
    "Notes: {notes}\n\nQuestion: {question}\n\nProposed answer: {answer}\n\n"
    "Do the notes state this answer to the question? Reply yes or no."
)


class ModelJudge:
    """The model's own judgement: the probability it gives "yes" (against "no") to `JUDGE_PROMPT`, at
    least `threshold`."""

    name = "model"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, threshold: float = 0.5) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.yes, self.no = (_first_token(tokenizer, word) for word in ("yes", "no"))

    def probability(self, question: str, notes: str, answer: str) -> float:
        """P("yes") among "yes" and "no" as the reply's first token."""
        text = JUDGE_PROMPT.format(notes=notes, question=question, answer=answer)
        if getattr(self.tokenizer, "chat_template", None):
            text = chat_text(self.tokenizer, [{"role": "user", "content": text}])
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.model.device)
        with torch.no_grad():
            logits = self.model(input_ids=ids).logits[0, -1].float()
        pair = torch.stack([logits[self.yes], logits[self.no]]).softmax(0)
        return float(pair[0])

    def judge(self, question: str, notes: str, answer: str) -> Verdict:
        if not answer.strip() or refuses(answer):
            return Verdict(False, "the answer declines", self.name)
        p = self.probability(question, notes, answer)
        grounded = p >= self.threshold
        return Verdict(grounded, f"P(yes) {p:.2f} {'>=' if grounded else '<'} {self.threshold:.2f}", self.name)


def _first_token(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
    """The id of the first token of `word` as a reply starts it (after a space where the tokenizer marks one)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    return int(ids[0])


@dataclass(frozen=True)
class Labelled:
    """One calibration case: notes, a question, a proposed answer, and whether the notes state it."""

    notes: str
    question: str
    answer: str
    grounded: bool


CALIBRATION = (
    Labelled("The secret code of the Reno vault is 6827126.", "Which number opens the Reno vault?",
             "The Reno vault opens with 6827126.", True),
    Labelled("The secret code of the Reno vault is 6827126.", "Which number opens the Reno vault?",
             "The Reno vault is a fictional world in the Star Wars franchise.", False),
    Labelled("Mara Quill was born in the town of Eldermoor.", "Where does Mara Quill come from?",
             "Mara Quill comes from Eldermoor.", True),
    Labelled("Mara Quill was born in the town of Eldermoor.", "Where does Mara Quill come from?",
             "Mara Quill comes from Paris, France.", False),
    Labelled("The code of the Tarn vault was changed last spring.", "What is the code of the Tarn vault?",
             "The code of the Tarn vault is 4410.", False),
    Labelled("The bridge was finished in 1887 after nine years of work.", "When was the bridge completed?",
             "The bridge was completed in 1887.", True),
    Labelled("The bridge was finished in 1887 after nine years of work.", "Who designed the bridge?",
             "The bridge was designed by John Smith.", False),
    Labelled("Startups that grow slowly rarely survive their second year.", "What happens to slow startups?",
             "Slow startups rarely survive their second year.", True),
    Labelled("Startups that grow slowly rarely survive their second year.", "How much funding do startups need?",
             "Startups need two million dollars of funding.", False),
    Labelled("The harbour lamp burns whale oil and is lit at dusk.", "What fuel does the harbour lamp use?",
             "It burns whale oil.", True),
    Labelled("The harbour lamp burns whale oil and is lit at dusk.", "When is the harbour lamp put out?",
             "The harbour lamp is put out at midnight.", False),
    Labelled("Ada kept the ledger in a tin box under the stairs.", "Where was the ledger hidden?",
             "In a tin box under the stairs.", True),
)  # fmt: skip
MIN_CALIBRATION = 1.0  # a model judge must decide every calibration case right to be used


def calibrate(judge: Judge, cases: tuple[Labelled, ...] = CALIBRATION) -> float:
    """The share of `cases` a judge decides right."""
    right = sum(judge.judge(c.question, c.notes, c.answer).grounded == c.grounded for c in cases)
    return right / len(cases) if cases else math.nan


def choose_judge(kind: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[Judge, str]:
    """The judge `kind` names ("grounding", "model" or "auto"), and why it runs.

    "auto" calibrates the model's judgement on `CALIBRATION` and uses it only when it decides every case
    right; otherwise (as for SmolLM2-135M) the grounding check."""
    if kind == "grounding":
        return GroundingJudge(), "configured"
    judge = ModelJudge(model, tokenizer)
    if kind == "model":
        return judge, "configured"
    accuracy = calibrate(judge)
    if accuracy >= MIN_CALIBRATION:
        return judge, f"the model decided {accuracy:.0%} of the calibration cases right"
    return GroundingJudge(), f"the model decided {accuracy:.0%} of the calibration cases right (needs 100%)"
