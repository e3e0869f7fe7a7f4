"""RULER's needle-in-a-haystack tasks: 7-digit "magic numbers" hidden in essay prose.

`niah_single` hides one needle; `niah_multikey` hides the asked-for needle among distractor
needles of the same form with other keys, so the reader must match the key, not just find a number;
`niah_multivalue` hides several numbers for one key and `niah_multiquery` asks for several keys at once
(every number must be found). `absent` hides needles of other keys only and asks for a key that is not
there: the right answer is that the context does not say, and any number is invented.

Three tasks ask in words rather than by a shared template: `niah_paraphrase` words the needle and the question
differently (seeded templates that share only the key, "the Reno vault", and no other content word), so a
reader cannot match the question's wording to the needle's; `niah_distractor` hides several needles of one
wording for different vaults and asks for one (the distractors' values score 0); `absent_related` speaks of the
asked vault without ever giving its code (plus needles of other vaults with codes), so "not found" is right and
a code is invented or borrowed.
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
    context, spans, _, target = _hide_shuffled(tokenizer, haystack, length, needles, rng)
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


# Vault names (not in RULER's essays nor the example document) and the paraphrased needles and questions: each
# needle template shares with each question template only the key ("the Reno vault"); tests check it.
_VAULT_NAMES = (
    "Reno",
    "Brenna",
    "Dunmere",
    "Elsin",
    "Farrow",
    "Galen",
    "Harlow",
    "Isley",
    "Jorvik",
    "Kestrel",
    "Lomond",
    "Merrit",
    "Norwick",
    "Orla",
    "Penrith",
    "Quenby",
    "Rosmer",
    "Selby",
    "Tarrant",
    "Varnel",
    "Wexley",
    "Yarrow",
    "Zennor",
    "Bellmont",
)
PARAPHRASE_NEEDLES = (
    "The combination that unlocks the {key} is {value}.",
    "Whoever wishes to enter the {key} must punch in {value}.",
    "Dialling {value} makes the lock on the {key} spring back.",
    "Staff were told that the {key} responds only to {value}.",
    "{value} is the sequence which releases the {key}.",
)
PARAPHRASE_QUESTIONS = (
    "Which number opens the {key}?",
    "What do I need to type to get into the {key}?",
    "What figures give access to the {key}?",
    "Which digits let someone inside the {key}?",
    "What is the passcode for the {key}?",
)
# sentences about a vault that never give its code (`absent_related`)
RELATED_WITHOUT_VALUE = (
    "The code of the {key} was changed last spring, and only its keeper knows it.",
    "Nobody wrote down the combination of the {key} after the old locksmith retired.",
    "The {key} has a lock whose setting was kept secret from the staff.",
    "Rumours about the combination of the {key} spread widely, but it was never made public.",
)


def _vault(name: str) -> str:
    return f"{name} vault"


def niah_paraphrase(tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int) -> EvalCase:
    """One needle and its question, each in a seeded wording of its own: they share the vault's name only."""
    rng = case_rng("niah_paraphrase", length, seed, index)
    key = _vault(rng.choice(_VAULT_NAMES))
    value = _number(rng)
    needle = rng.choice(PARAPHRASE_NEEDLES).format(key=key, value=value)
    question = rng.choice(PARAPHRASE_QUESTIONS).format(key=key)
    context, spans = hide_in_haystack(tokenizer, haystack, length, [needle], rng)
    return EvalCase(
        task="niah_paraphrase",
        case_id=f"niah_paraphrase-{length}-{seed}-{index}",
        context=context,
        question=question,
        answers=(value,),
        evidence=(spans[0],),
        length=length,
        seed=seed,
        metadata={"key": key, "needle": needle.strip()},
    )


def niah_distractor(
    tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int, distractors: int = 3
) -> EvalCase:
    """`distractors + 1` needles of one seeded wording for different vaults, each with its own code; the question
    (in another wording) asks for one. The distractors' keys, codes and spans are in `metadata` (in the order they
    lie in the context); an answer that names a distractor's code scores 0."""
    rng = case_rng("niah_distractor", length, seed, index)
    keys = [_vault(name) for name in rng.sample(_VAULT_NAMES, distractors + 1)]
    values = _distinct_numbers(rng, len(keys))
    template = rng.choice(PARAPHRASE_NEEDLES)
    needles = [template.format(key=key, value=value) for key, value in zip(keys, values)]
    context, spans, order, target = _hide_shuffled(tokenizer, haystack, length, needles, rng)
    return EvalCase(
        task="niah_distractor",
        case_id=f"niah_distractor-{length}-{seed}-{index}",
        context=context,
        question=rng.choice(PARAPHRASE_QUESTIONS).format(key=keys[0]),
        answers=(values[0],),
        evidence=(spans[target],),
        length=length,
        seed=seed,
        metadata={"key": keys[0], **_others(order, target, spans, keys, values)},
    )


def _hide_shuffled(
    tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, inserts: list[str], rng: random.Random
) -> tuple[str, list[tuple[int, int]], list[int], int]:
    """`inserts` hidden in the haystack in a seeded order: the context, the spans (in context order), that order,
    and where the first insert (the asked one) lies in it."""
    order = list(range(len(inserts)))
    rng.shuffle(order)
    context, spans = hide_in_haystack(tokenizer, haystack, length, [inserts[i] for i in order], rng)
    return context, spans, order, order.index(0)


def absent_related(
    tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int, distractors: int = 3
) -> EvalCase:
    """A sentence about the asked vault that never gives its code, among needles of other vaults with codes: no
    answer is right but "not found" or one that stays with what the text says (`answers` is empty; the related
    sentence is the evidence, the other vaults' needles are in `metadata`)."""
    rng = case_rng("absent_related", length, seed, index)
    keys = [_vault(name) for name in rng.sample(_VAULT_NAMES, distractors + 1)]
    values = _distinct_numbers(rng, distractors)
    related = rng.choice(RELATED_WITHOUT_VALUE).format(key=keys[0])
    inserts = [related] + [rng.choice(PARAPHRASE_NEEDLES).format(key=k, value=v) for k, v in zip(keys[1:], values)]
    context, spans, order, target = _hide_shuffled(tokenizer, haystack, length, inserts, rng)
    return EvalCase(
        task="absent_related",
        case_id=f"absent_related-{length}-{seed}-{index}",
        context=context,
        question=rng.choice(PARAPHRASE_QUESTIONS).format(key=keys[0]),
        answers=(),
        evidence=(spans[target],),
        length=length,
        seed=seed,
        metadata={"key": keys[0], "related": related, **_others(order, target, spans, keys, ["", *values])},
    )


def _others(
    order: list[int], target: int, spans: list[tuple[int, int]], keys: list[str], values: list[str]
) -> dict[str, list]:
    """The needles other than the asked one, in the order they lie in the context: their keys, values and spans
    (`order[i]` is the needle placed `i`-th)."""
    placed = [i for i in range(len(order)) if i != target]
    return {
        "distractor_keys": [keys[order[i]] for i in placed],
        "distractor_values": [values[order[i]] for i in placed],
        "distractors": [spans[i] for i in placed],
    }


def _distinct_numbers(rng: random.Random, count: int) -> list[str]:
    numbers: list[str] = []
    while len(numbers) < count:
        number = _number(rng)
        if number not in numbers:
            numbers.append(number)
    return numbers
