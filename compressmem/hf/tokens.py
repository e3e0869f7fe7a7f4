"""Decoding token ids to text with the type it has: `PreTrainedTokenizerBase.decode` is typed `str | list[str]` (a
batch of sequences decodes to a list), but compressmem only ever decodes one sequence at a time."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase


def decode_text(
    tokenizer: PreTrainedTokenizerBase, token_ids: list[int] | torch.Tensor, *, skip_special_tokens: bool = False
) -> str:
    """The text of one sequence of token ids (a list or a 1-D tensor), as `tokenizer.decode` gives it."""
    text = tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
    if not isinstance(text, str):
        raise TypeError(
            f"decode_text decodes one sequence of token ids, but got a batch of {len(text)}: pass a list of ints or "
            "a 1-D tensor, one sequence at a time."
        )
    return text
