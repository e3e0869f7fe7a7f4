"""The lexical gate: BM25 between the gate prompt's words and each block's raw text.

It needs no KV at all (a bank of token ids suffices) and finds rare names, keys and numbers that a
small model's attention over compressed keys misses; see the README's gate measurements.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..bank import MemoryBank

_WORD = re.compile(r"\w+")
_K1, _B = 1.2, 0.75


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class LexicalIndex:
    """Word counts of every block, and the document frequencies BM25 weighs them by."""

    counts: list[Counter]
    lengths: list[int]
    document_frequency: Counter

    @classmethod
    def build(cls, bank: MemoryBank, tokenizer: PreTrainedTokenizerBase) -> "LexicalIndex":
        counts = [Counter(words(tokenizer.decode(block.token_ids, skip_special_tokens=True))) for block in bank.blocks]
        frequency = Counter(word for count in counts for word in count)
        return cls(counts, [sum(c.values()) for c in counts], frequency)


class LexicalGate:
    """BM25 over words; a row's scores are normalised to sum to 1 (uniform when nothing matches)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def index(self, bank: MemoryBank, model: PreTrainedModel) -> LexicalIndex:
        return LexicalIndex.build(bank, self.tokenizer)

    def score(self, model: PreTrainedModel, prompts: list[str], index: LexicalIndex) -> torch.Tensor:
        return torch.stack([self._score_one(prompt, index) for prompt in prompts])

    def _score_one(self, prompt: str, index: LexicalIndex) -> torch.Tensor:
        blocks = len(index.counts)
        average = sum(index.lengths) / blocks
        scores = torch.zeros(blocks)
        for term in set(words(prompt)):
            frequency = index.document_frequency.get(term, 0)
            if not frequency:
                continue
            idf = math.log(1 + (blocks - frequency + 0.5) / (frequency + 0.5))
            for b, (count, length) in enumerate(zip(index.counts, index.lengths)):
                tf = count.get(term, 0)
                if tf:
                    scores[b] += idf * tf * (_K1 + 1) / (tf + _K1 * (1 - _B + _B * length / average))
        total = scores.sum()
        return scores / total if total > 0 else torch.full((blocks,), 1.0 / blocks)
