"""RULER's needle-in-a-haystack tasks: 7-digit "magic numbers" hidden in essay prose.

`niah_single` hides one needle; `niah_multikey` hides the asked-for needle among distractor
needles of the same form with other keys, so the reader must match the key, not just find a number;
`niah_multivalue` hides several numbers for one key and `niah_multiquery` asks for several keys at once
(every number must be found). `absent` hides needles of other keys only and asks for a key that is not
there: the right answer is that the context does not say, and any number is invented.
"""

from __future__ import annotations

import random

from transformers import PreTrainedTokenizerBase

from .cases import EvalCase, case_rng
from .haystack import hide_in_haystack

_KEY_WORDS = (
    "amber",
    "brisk",
    "cobalt",
    "dusty",
    "eager",
    "fabled",
    "gentle",
    "hollow",
    "ivory",
    "jolly",
    "keen",
    "lunar",
    "mellow",
    "nimble",
    "opal",
    "placid",
    "quiet",
    "rustic",
    "silent",
    "tidal",
    "umber",
    "vivid",
    "woolen",
    "zesty",
)
_KEY_NOUNS = (
    "anchor",
    "beacon",
    "canyon",
    "dragon",
    "ember",
    "falcon",
    "garden",
    "harbor",
    "island",
    "jackal",
    "kettle",
    "lantern",
    "meadow",
    "needle",
    "orchard",
    "pepper",
    "quarry",
    "river",
    "saddle",
    "tunnel",
    "valley",
    "walnut",
)


def niah_single(tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int) -> EvalCase:
    """One needle at a seeded depth; the question asks for its number."""
    return _niah("niah_single", tokenizer, haystack, length, seed, index, distractors=0)


def niah_multikey(
    tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int, distractors: int = 3
) -> EvalCase:
    """The asked-for needle plus `distractors` needles with other keys, all at seeded depths."""
    return _niah("niah_multikey", tokenizer, haystack, length, seed, index, distractors)


def niah_multivalue(
    tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int, values: int = 4
) -> EvalCase:
    """`values` needles with the same key and different numbers; all of them must be found (RULER)."""
    rng = case_rng("niah_multivalue", length, seed, index)
    key = rng.choice(_keys())
    numbers = [_number(rng) for _ in range(values)]
    return _every_number(
        "niah_multivalue", tokenizer, haystack, length, seed, index, rng, [key] * values, numbers, key, {"key": key}
    )


def niah_multiquery(
    tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int, queries: int = 4
) -> EvalCase:
    """`queries` needles with different keys, all asked for in one question; every number must be found (RULER)."""
    rng = case_rng("niah_multiquery", length, seed, index)
    keys = rng.sample(_keys(), queries)
    numbers = [_number(rng) for _ in keys]
    asked = ", ".join(keys[:-1]) + f" and {keys[-1]}"
    return _every_number(
        "niah_multiquery", tokenizer, haystack, length, seed, index, rng, keys, numbers, asked, {"keys": keys}
    )


def _every_number(
    task: str,
    tokenizer: PreTrainedTokenizerBase,
    haystack: str,
    length: int,
    seed: int,
    index: int,
    rng: random.Random,
    keys: list[str],
    numbers: list[str],
    asked: str,
    metadata: dict,
) -> EvalCase:
    """A case whose needles pair `keys` with `numbers`, asking for every number of `asked`."""
    needles = [_needle(key, number) for key, number in zip(keys, numbers)]
    context, spans = hide_in_haystack(tokenizer, haystack, length, needles, rng)
    return EvalCase(
        task=task,
        case_id=f"{task}-{length}-{seed}-{index}",
        context=context,
        question=f"What are all the special magic numbers for {asked} mentioned in the provided text?",
        answers=tuple(numbers),
        evidence=tuple(spans),
        length=length,
        seed=seed,
        metadata=metadata,
    )


def absent(
    tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int, distractors: int = 4
) -> EvalCase:
    """Needles of `distractors` keys, and a question about a key none of them has: no answer is right but
    "not found" (`answers` is empty; the spans of the distractors are in `metadata`)."""
    rng = case_rng("absent", length, seed, index)
    keys = rng.sample(_keys(), distractors + 1)
    needles = [_needle(key, _number(rng)) for key in keys[1:]]
    context, spans = hide_in_haystack(tokenizer, haystack, length, needles, rng)
    return EvalCase(
        task="absent",
        case_id=f"absent-{length}-{seed}-{index}",
        context=context,
        question=f"What is the special magic number for {keys[0]} mentioned in the provided text?",
        answers=(),
        evidence=(),
        length=length,
        seed=seed,
        metadata={"key": keys[0], "distractors": spans},
    )


def _keys() -> list[str]:
    return [f"{word}-{noun}" for word in _KEY_WORDS for noun in _KEY_NOUNS]


def _number(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 10_000_000))


def _needle(key: str, number: str) -> str:
    return f"One of the special magic numbers for {key} is: {number}."


def _niah(
    task: str, tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int, distractors: int
) -> EvalCase:
    rng = case_rng(task, length, seed, index)
    keys = rng.sample(_keys(), distractors + 1)
    values = [_number(rng) for _ in keys]
    needles = [_needle(key, value) for key, value in zip(keys, values)]
    order = list(range(len(needles)))
    rng.shuffle(order)
    context, spans = hide_in_haystack(tokenizer, haystack, length, [needles[i] for i in order], rng)
    target = order.index(0)
    return EvalCase(
        task=task,
        case_id=f"{task}-{length}-{seed}-{index}",
        context=context,
        question=f"What is the special magic number for {keys[0]} mentioned in the provided text?",
        answers=(values[0],),
        evidence=(spans[target],),
        length=length,
        seed=seed,
        metadata={"key": keys[0], "distractors": [spans[i] for i in range(len(spans)) if i != target]},
    )
