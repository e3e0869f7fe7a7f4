"""The lexical gate: BM25 between the gate prompt's words and each block's raw text.

It needs no KV at all (a bank of token ids suffices) and finds rare names, keys and numbers that a
small model's attention over compressed keys misses; see the README's gate measurements. The index
is inverted and packed (4-byte block ids and counts per posting), so a bank of millions of tokens
indexes in tens of megabytes and a query touches only the postings of its own words.
"""

from __future__ import annotations

import math
import re
from array import array
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
    """For every word, the blocks that hold it and how often; and every block's length in words."""

    vocabulary: dict[str, int]
    posting_blocks: list[array]
    posting_counts: list[array]
    lengths: torch.Tensor  # [blocks], float

    @classmethod
    def build(cls, bank: MemoryBank, tokenizer: PreTrainedTokenizerBase) -> "LexicalIndex":
        vocabulary: dict[str, int] = {}
        blocks: list[array] = []
        counts: list[array] = []
        lengths = []
        for index, block in enumerate(bank.blocks):
            block_words = Counter(words(tokenizer.decode(block.token_ids, skip_special_tokens=True)))
            lengths.append(sum(block_words.values()))
            for word, count in block_words.items():
                term = vocabulary.setdefault(word, len(vocabulary))
                if term == len(blocks):
                    blocks.append(array("i"))
                    counts.append(array("i"))
                blocks[term].append(index)
                counts[term].append(count)
        return cls(vocabulary, blocks, counts, torch.tensor(lengths, dtype=torch.float32))


class LexicalGate:
    """BM25 over words; a row's scores are normalised to sum to 1 (uniform when nothing matches)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def index(self, bank: MemoryBank, model: PreTrainedModel) -> LexicalIndex:
        return LexicalIndex.build(bank, self.tokenizer)

    def score(self, model: PreTrainedModel, prompts: list[str], index: LexicalIndex) -> torch.Tensor:
        return torch.stack([self._score_one(prompt, index) for prompt in prompts])

    def _score_one(self, prompt: str, index: LexicalIndex) -> torch.Tensor:
        blocks = index.lengths.numel()
        norm = _K1 * (1 - _B + _B * index.lengths / index.lengths.mean().clamp(min=1e-9))
        scores = torch.zeros(blocks)
        for word in set(words(prompt)):
            term = index.vocabulary.get(word)
            if term is None:
                continue
            holders = torch.frombuffer(index.posting_blocks[term], dtype=torch.int32).long()
            tf = torch.frombuffer(index.posting_counts[term], dtype=torch.int32).float()
            frequency = holders.numel()
            idf = math.log(1 + (blocks - frequency + 0.5) / (frequency + 0.5))
            scores.index_add_(0, holders, idf * tf * (_K1 + 1) / (tf + norm[holders]))
        total = scores.sum()
        return scores / total if total > 0 else torch.full((blocks,), 1.0 / blocks)
