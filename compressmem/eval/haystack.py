"""Essay filler: cut a target number of tokens from a haystack and hide sentences in it at seeded depths."""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..hf.tokens import decode_text


@lru_cache(maxsize=4)
def load_haystack(path: str | Path) -> str:
    """Haystack text from RULER's `{"text": ...}` JSON file or from a plain text file."""
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    text = json.loads(raw)["text"] if path.suffix == ".json" else raw
    if not text.strip():
        raise ValueError(f"The haystack {path} holds no text.")
    return text


def count_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def hide_in_haystack(
    tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, inserts: list[str], rng: random.Random
) -> tuple[str, list[tuple[int, int]]]:
    """A `length`-token context of haystack prose with `inserts` placed, in order, at sentence breaks.

    Returns the context and the character span of each insert. The filler starts at a seeded offset
    and wraps around the haystack when the target is longer than the haystack.
    """
    inserts = [f" {text.strip()} " for text in inserts]
    budget = length - sum(count_tokens(tokenizer, text) for text in inserts)
    if budget < 1:
        raise ValueError(
            f"A {length}-token context cannot hold the {len(inserts)} inserted sentences; ask for a longer context."
        )
    filler = _filler(tokenizer, haystack, budget, rng)
    cuts = sorted(_sentence_break(filler, rng.uniform(0.05, 0.95)) for _ in inserts)
    pieces, spans, position, previous = [], [], 0, 0
    for cut, text in zip(cuts, inserts):
        pieces.append(filler[previous:cut])
        position += cut - previous
        spans.append((position, position + len(text)))
        pieces.append(text)
        position += len(text)
        previous = cut
    pieces.append(filler[previous:])
    return "".join(pieces), spans


def _filler(tokenizer: PreTrainedTokenizerBase, haystack: str, budget: int, rng: random.Random) -> str:
    """Exactly `budget` tokens of haystack (as decoded text), from a seeded start."""
    start = rng.randrange(len(haystack))
    chars = 6 * budget + 64
    while True:
        repeats = (start + chars) // len(haystack) + 1
        window = (haystack * repeats)[start : start + chars] if repeats > 1 else haystack[start : start + chars]
        ids = tokenizer(window, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= budget:
            return decode_text(tokenizer, ids[:budget])
        chars *= 2


def _sentence_break(text: str, depth: float) -> int:
    """The end of the sentence nearest before `depth` (a fraction of the text), else that point itself."""
    point = int(depth * len(text))
    stop = text.rfind(". ", 0, point)
    return stop + 1 if stop >= 0 else point
