"""Tokenizer calls with the types they have for compressmem: `PreTrainedTokenizerBase.decode` is typed
`str | list[str]` (a batch of sequences decodes to a list) and `apply_chat_template` as any of text, ids or an
encoding, but compressmem only ever decodes one sequence, and asks a chat template for text or for tensors."""

from __future__ import annotations

import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase

Messages = list[dict[str, str]]
"""A chat: one `{"role": ..., "content": ...}` per turn."""


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


def chat_text(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> str:
    """The tokenizer's chat template applied to `messages`, with the generation prompt, as text."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(f"The chat template gave a {type(text).__name__} where text was asked for.")
    return text


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> torch.Tensor:
    """`[1, n]` token ids of the tokenizer's chat template applied to `messages`, with the generation prompt."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = encoded["input_ids"] if isinstance(encoded, BatchEncoding) else None
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"The chat template gave a {type(encoded).__name__} where a tensor encoding was asked for.")
    return ids


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """`[1, n]` token ids of `text` as a prompt, with the tokenizer's special tokens (no chat template)."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"The tokenizer gave a {type(ids).__name__} where a tensor of ids was asked for.")
    return ids
