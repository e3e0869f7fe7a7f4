"""RULER's variable tracking: chains of `VAR X = VAR Y` assignments hidden in essay prose.

The first statement of a chain binds a number; each later one copies the previous variable. The
question gives the number and asks for every variable that holds it, so finding all of them means
following the chain hop by hop: multi-hop by construction. Distractor chains bind other numbers.
"""

from __future__ import annotations

import itertools
import random
import string

from transformers import PreTrainedTokenizerBase

from .cases import EvalCase, case_rng
from .haystack import hide_in_haystack


def variable_tracking(
    tokenizer: PreTrainedTokenizerBase,
    haystack: str,
    length: int,
    seed: int,
    index: int,
    hops: int = 4,
    chains: int = 1,
) -> EvalCase:
    """`chains` chains of `hops` + 1 statements each; the question asks about the first chain's value."""
    rng = case_rng("variable_tracking", length, seed, index)
    names = _distinct_names(rng, chains * (hops + 1))
    values = rng.sample(range(10_000, 100_000), chains)
    statements: list[tuple[int, str]] = []  # (chain, statement), each chain in order
    for chain in range(chains):
        chain_names = names[chain * (hops + 1) : (chain + 1) * (hops + 1)]
        statements.append((chain, f"VAR {chain_names[0]} = {values[chain]}."))
        statements += [(chain, f"VAR {b} = VAR {a}.") for a, b in itertools.pairwise(chain_names)]
    statements = _interleave(statements, chains, rng)
    context, spans = hide_in_haystack(tokenizer, haystack, length, [text for _, text in statements], rng)
    evidence = tuple(span for (chain, _), span in zip(statements, spans) if chain == 0)
    return EvalCase(
        task="variable_tracking",
        case_id=f"variable_tracking-{length}-{seed}-{index}",
        context=context,
        question=f"Find all variables that are assigned the value {values[0]} in the text above.",
        answers=tuple(names[: hops + 1]),
        evidence=evidence,
        length=length,
        seed=seed,
        metadata={"value": values[0], "hops": hops, "chains": chains},
    )


def _distinct_names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    return names


def _interleave(statements: list[tuple[int, str]], chains: int, rng: random.Random) -> list[tuple[int, str]]:
    """A random merge of the chains that keeps each chain's statements in order."""
    queues = [[s for s in statements if s[0] == chain] for chain in range(chains)]
    merged = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        merged.append(queue.pop(0))
    return merged
