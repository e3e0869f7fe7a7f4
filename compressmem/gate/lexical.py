"""The lexical gate: BM25 between the gate prompt's words and each block's raw text.

It needs no KV at all (a bank of token ids suffices) and finds rare names, keys and numbers that a
small model's attention over compressed keys misses; see the README's gate measurements. The index
is inverted and packed in flat tensors (for every word, the blocks that hold it and how often), built
once per bank and kept with it (beside a bank folder's shards), so a question touches only the
postings of its own words and a bank of millions of tokens is never re-read to answer one.
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
from ..config import GateConfig
from ..hf.tokens import decode_text
from .base import register

_WORD = re.compile(r"\w+")
_K1, _B = 1.2, 0.75
INDEX_NAME = "lexical"
INDEX_VERSION = 1


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class LexicalIndex:
    """For every word, the blocks that hold it and how often (`postings` slices `offsets[t]:offsets[t+1]`), and
    every block's length in words."""

    vocabulary: dict[str, int]
    offsets: torch.Tensor  # [words + 1] int64
    blocks: torch.Tensor  # [postings] int32
    counts: torch.Tensor  # [postings] int32
    lengths: torch.Tensor  # [blocks] float32

    @classmethod
    def build(cls, bank: MemoryBank, tokenizer: PreTrainedTokenizerBase) -> LexicalIndex:
        vocabulary: dict[str, int] = {}
        holders: list[array] = []
        counts: list[array] = []
        lengths = []
        for index in range(len(bank)):
            block_words = Counter(words(decode_text(tokenizer, bank.token_ids(index), skip_special_tokens=True)))
            lengths.append(sum(block_words.values()))
            for word, count in block_words.items():
                term = vocabulary.setdefault(word, len(vocabulary))
                if term == len(holders):
                    holders.append(array("i"))
                    counts.append(array("i"))
                holders[term].append(index)
                counts[term].append(count)
        sizes = torch.tensor([0] + [len(h) for h in holders], dtype=torch.int64)
        return cls(
            vocabulary, sizes.cumsum(0), _flat(holders), _flat(counts), torch.tensor(lengths, dtype=torch.float32)
        )

    def missing(self, terms: set[str]) -> list[str]:
        """The `terms` (compared as `reader.quotes.normal` compares words) that no block holds."""
        return sorted(t for t in terms if t not in self.vocabulary and t + "s" not in self.vocabulary)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The index as tensors, to keep with the bank (the vocabulary as newline-joined UTF-8)."""
        text = "\n".join(self.vocabulary).encode("utf-8")
        return {
            "vocabulary": torch.frombuffer(bytearray(text), dtype=torch.uint8)
            if text
            else torch.zeros(0, dtype=torch.uint8),
            "offsets": self.offsets,
            "blocks": self.blocks,
            "counts": self.counts,
            "lengths": self.lengths,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> LexicalIndex:
        text = bytes(tensors["vocabulary"].numpy()).decode("utf-8")
        terms = text.split("\n") if text else []
        return cls(
            {word: i for i, word in enumerate(terms)},
            tensors["offsets"],
            tensors["blocks"],
            tensors["counts"],
            tensors["lengths"],
        )


def _flat(parts: list[array]) -> torch.Tensor:
    """The int32 arrays `parts`, one after the other, as one tensor."""
    joined = array("i")
    for part in parts:
        joined.extend(part)
    return torch.frombuffer(joined, dtype=torch.int32).clone() if len(joined) else torch.zeros(0, dtype=torch.int32)


@register("lexical", reads_keys=False)
class LexicalGate:
    """BM25 over words; a row's scores are normalised to sum to 1 (uniform when nothing matches)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def from_config(
        cls, config: GateConfig, tokenizer: PreTrainedTokenizerBase, layers: tuple[int, ...], head: object
    ) -> LexicalGate:
        return cls(tokenizer)

    def missing(self, index: LexicalIndex, terms: set[str]) -> list[str]:
        """The `terms` no block holds: the bank's vocabulary is known exactly."""
        return index.missing(terms)

    def index(self, bank: MemoryBank, model: PreTrainedModel | None = None) -> LexicalIndex:
        """The bank's BM25 index: the one kept with the bank (unpacked once per process), or built now and kept
        with it."""
        return bank.memo(INDEX_NAME, lambda: self._load_or_build(bank))

    def _load_or_build(self, bank: MemoryBank) -> LexicalIndex:
        kept = bank.derived(INDEX_NAME)
        if kept is not None and kept[1].get("version") == INDEX_VERSION and kept[1].get("blocks") == len(bank):
            return LexicalIndex.from_tensors(kept[0])
        index = LexicalIndex.build(bank, self.tokenizer)
        bank.keep_derived(INDEX_NAME, index.tensors(), {"version": INDEX_VERSION, "blocks": len(bank)})
        return index

    def score(self, model: PreTrainedModel | None, prompts: list[str], index: LexicalIndex) -> torch.Tensor:
        return torch.stack([self._score_one(prompt, index) for prompt in prompts])

    def _score_one(self, prompt: str, index: LexicalIndex) -> torch.Tensor:
        blocks = index.lengths.numel()
        norm = _K1 * (1 - _B + _B * index.lengths / index.lengths.mean().clamp(min=1e-9))
        scores = torch.zeros(blocks)
        for word in set(words(prompt)):
            term = index.vocabulary.get(word)
            if term is None:
                continue
            start, end = int(index.offsets[term]), int(index.offsets[term + 1])
            holders = index.blocks[start:end].long()
            tf = index.counts[start:end].float()
            frequency = holders.numel()
            idf = math.log(1 + (blocks - frequency + 0.5) / (frequency + 0.5))
            scores.index_add_(0, holders, idf * tf * (_K1 + 1) / (tf + norm[holders]))
        total = scores.sum()
        return scores / total if total > 0 else torch.full((blocks,), 1.0 / blocks)
