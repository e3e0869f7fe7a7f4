"""RULER's needle-in-a-haystack tasks: 7-digit "magic numbers" hidden in essay prose.

`niah_single` hides one needle; `niah_multikey` hides the asked-for needle among distractor
needles of the same form with other keys, so the reader must match the key, not just find a number.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from .cases import EvalCase, case_rng
from .haystack import hide_in_haystack

_KEY_WORDS = (
    "amber", "brisk", "cobalt", "dusty", "eager", "fabled", "gentle", "hollow", "ivory", "jolly", "keen", "lunar",
    "mellow", "nimble", "opal", "placid", "quiet", "rustic", "silent", "tidal", "umber", "vivid", "woolen", "zesty",
)
_KEY_NOUNS = (
    "anchor", "beacon", "canyon", "dragon", "ember", "falcon", "garden", "harbor", "island", "jackal", "kettle",
    "lantern", "meadow", "needle", "orchard", "pepper", "quarry", "river", "saddle", "tunnel", "valley", "walnut",
)


def niah_single(tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int) -> EvalCase:
    """One needle at a seeded depth; the question asks for its number."""
    return _niah("niah_single", tokenizer, haystack, length, seed, index, distractors=0)


def niah_multikey(tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int,
                  distractors: int = 3) -> EvalCase:
    """The asked-for needle plus `distractors` needles with other keys, all at seeded depths."""
    return _niah("niah_multikey", tokenizer, haystack, length, seed, index, distractors)


def _niah(task: str, tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, seed: int, index: int,
          distractors: int) -> EvalCase:
    rng = case_rng(task, length, seed, index)
    keys = rng.sample([f"{word}-{noun}" for word in _KEY_WORDS for noun in _KEY_NOUNS], distractors + 1)
    values = [str(rng.randrange(1_000_000, 10_000_000)) for _ in keys]
    needles = [f"One of the special magic numbers for {key} is: {value}." for key, value in zip(keys, values)]
    order = list(range(len(needles)))
    rng.shuffle(order)
    context, spans = hide_in_haystack(tokenizer, haystack, length, [needles[i] for i in order], rng)
    target = order.index(0)
    return EvalCase(
        task=task, case_id=f"{task}-{length}-{seed}-{index}", context=context,
        question=f"What is the special magic number for {keys[0]} mentioned in the provided text?",
        answers=(values[0],), evidence=(spans[target],), length=length, seed=seed,
        metadata={"key": keys[0], "distractors": [spans[i] for i in range(len(spans)) if i != target]},
    )
