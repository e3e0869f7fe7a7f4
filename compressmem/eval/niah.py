"""RULER-style single needle in a haystack: a 7-digit "magic number" hidden in essay prose."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

_KEY_WORDS = (
    "amber", "brisk", "cobalt", "dusty", "eager", "fabled", "gentle", "hollow", "ivory", "jolly", "keen", "lunar",
    "mellow", "nimble", "opal", "placid", "quiet", "rustic", "silent", "tidal", "umber", "vivid", "woolen", "zesty",
)
_KEY_NOUNS = (
    "anchor", "beacon", "canyon", "dragon", "ember", "falcon", "garden", "harbor", "island", "jackal", "kettle",
    "lantern", "meadow", "needle", "orchard", "pepper", "quarry", "river", "saddle", "tunnel", "valley", "walnut",
)


@dataclass(frozen=True)
class NiahCase:
    """A context with one needle, the question about it, the accepted answers and where the needle is."""

    context: str
    question: str
    answers: tuple[str, ...]
    needle_span: tuple[int, int]  # character span of the needle sentence in `context`


def load_haystack(path: str | Path) -> str:
    """The essay text of RULER's haystack file (`{"text": ...}`)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["text"]


def make_niah_case(tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int) -> NiahCase:
    """A `length`-token context (within a sentence) cut from `haystack`, the needle at a seeded depth."""
    rng = random.Random(seed)
    key = f"{rng.choice(_KEY_WORDS)}-{rng.choice(_KEY_NOUNS)}"
    value = str(rng.randrange(1_000_000, 10_000_000))
    needle = f" One of the special magic numbers for {key} is: {value}. "
    budget = length - len(tokenizer(needle, add_special_tokens=False)["input_ids"])
    start = rng.randrange(0, max(1, len(haystack) - 8 * length))
    window = haystack[start:start + 8 * length]
    ids = tokenizer(window, add_special_tokens=False)["input_ids"][:budget]
    text = tokenizer.decode(ids)
    depth = rng.uniform(0.05, 0.95)
    cut = text.rfind(". ", 0, int(depth * len(text))) + 1 or int(depth * len(text))
    context = text[:cut] + needle + text[cut:]
    span = (cut, cut + len(needle))
    question = f"What is the special magic number for {key} mentioned in the provided text?"
    return NiahCase(context, question, (value,), span)


def substring_match(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    """RULER's metric: 1.0 if any gold answer occurs in the prediction (case-insensitive)."""
    return float(any(answer.lower() in prediction.lower() for answer in answers))
