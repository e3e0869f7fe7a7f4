"""Token-exact chunking of a context, with offsets back to the text for traces."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

Context = str | Sequence[str] | Sequence[int] | torch.Tensor
"""A long context: text, a list of documents, or token ids (list or 1-D tensor)."""


class ContextError(ValueError):
    """The context cannot be read: empty, of the wrong type, or the wrong shape."""


@dataclass(frozen=True)
class Chunk:
    """One piece of the context: its token ids and where it came from."""

    token_ids: torch.Tensor  # [n] int64
    document: int  # index of the document in a list-of-text context (0 otherwise)
    token_start: int  # offset of the first token within its document
    char_span: tuple[int, int] | None  # span of the chunk in its document's text, when the context was text


def tokenize_context(context: Context, tokenizer: PreTrainedTokenizerBase) -> list[tuple[torch.Tensor, list | None]]:
    """Turn a context into one (token ids, char offsets or None) pair per document; reject what is not a context."""
    if isinstance(context, str):
        return [_tokenize_text(context, tokenizer, 0)]
    if isinstance(context, torch.Tensor):
        return [(_check_id_tensor(context, len(tokenizer)), None)]
    if isinstance(context, Sequence) and not isinstance(context, (bytes, bytearray)):
        if len(context) == 0:
            raise ContextError("The context is an empty list; pass text or token ids to read.")
        if all(isinstance(item, str) for item in context):
            return [_tokenize_text(text, tokenizer, i) for i, text in enumerate(context)]
        if all(isinstance(item, int) and not isinstance(item, bool) for item in context):
            return [(_check_id_tensor(_id_tensor(context), len(tokenizer)), None)]
        kinds = sorted({type(item).__name__ for item in context})
        raise ContextError(f"A list context must hold only strings (documents) or only ints (token ids); got {kinds}.")
    raise ContextError(
        f"The context must be a str, a list of str, a list of token ids or a 1-D tensor of ids; got "
        f"{type(context).__name__}. Read files and decode bytes to text first."
    )


def split_into_chunks(documents: list[tuple[torch.Tensor, list | None]], chunk_size: int) -> list[Chunk]:
    """Cut each document into `chunk_size`-token chunks; the last chunk of a document may be shorter."""
    chunks = []
    for doc_index, (ids, offsets) in enumerate(documents):
        for start in range(0, ids.numel(), chunk_size):
            end = min(start + chunk_size, ids.numel())
            span = (offsets[start][0], offsets[end - 1][1]) if offsets is not None else None
            chunks.append(Chunk(ids[start:end], doc_index, start, span))
    return chunks


def check_pieces(pieces: object) -> None:
    """Refuse a streamed context that is one string (it would be read one character at a time) or not iterable."""
    if isinstance(pieces, (str, bytes)) or not isinstance(pieces, Iterable):
        raise ContextError("A streamed context is an iterable of text pieces, not one string (it would be read one "
                           "character at a time): pass text_pieces(path), or [text] for text already in memory.")


def stream_chunks(pieces: Iterable[str], tokenizer: PreTrainedTokenizerBase, chunk_size: int,
                  group: int) -> Iterator[list[Chunk]]:
    """Chunks of a text that arrives in pieces, `group` full chunks at a time (the last group may be short).

    One piece is tokenized at a time and only the tail of a chunk is carried over, so memory holds
    a piece and a group, never the whole text. Character spans count from the start of the stream.
    """
    check_pieces(pieces)
    carried_ids: list[int] = []
    carried_offsets: list[tuple[int, int]] = []
    start_token = char_base = 0
    pending: list[Chunk] = []
    for piece in pieces:
        if not isinstance(piece, str):
            raise ContextError(f"A streamed context must yield str pieces; got {type(piece).__name__}.")
        encoded = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast, verbose=False)
        carried_ids += encoded["input_ids"]
        offsets = encoded.get("offset_mapping") or [(0, 0)] * len(encoded["input_ids"])
        carried_offsets += [(char_base + a, char_base + b) for a, b in offsets]
        char_base += len(piece)
        used = 0
        while len(carried_ids) - used >= chunk_size:
            end = used + chunk_size
            span = (carried_offsets[used][0], carried_offsets[end - 1][1]) if tokenizer.is_fast else None
            pending.append(Chunk(torch.tensor(carried_ids[used:end]), 0, start_token, span))
            used, start_token = end, start_token + chunk_size
            if len(pending) == group:
                yield pending
                pending = []
        del carried_ids[:used], carried_offsets[:used]
    if carried_ids:
        span = (carried_offsets[0][0], carried_offsets[-1][1]) if tokenizer.is_fast else None
        pending.append(Chunk(torch.tensor(carried_ids), 0, start_token, span))
    if not pending and not start_token:
        raise ContextError("The streamed context holds no tokens; there is nothing to read.")
    if pending:
        yield pending


def text_pieces(path: str | Path, piece_chars: int = 1 << 20) -> Iterator[str]:
    """A UTF-8 text file in pieces of about `piece_chars` characters, each cut just before a space."""
    with open(path, encoding="utf-8") as handle:
        tail = ""
        while block := handle.read(piece_chars):
            text = tail + block
            cut = text.rfind(" ", 1)
            if cut <= 0:
                tail = text
                continue
            yield text[:cut]
            tail = text[cut:]
        if tail:
            yield tail


def _tokenize_text(text: str, tokenizer: PreTrainedTokenizerBase, index: int) -> tuple[torch.Tensor, list | None]:
    if not text.strip():
        where = "The context" if index == 0 else f"Document {index} of the context"
        raise ContextError(f"{where} is empty or only whitespace; there is nothing to read.")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast, verbose=False)
    offsets = encoded.get("offset_mapping")
    return torch.tensor(encoded["input_ids"], dtype=torch.long), offsets


def _id_tensor(ids: Sequence[int]) -> torch.Tensor:
    """A list of ids as int64, refusing values int64 cannot hold rather than wrapping them."""
    try:
        return torch.tensor(list(ids), dtype=torch.long)
    except (OverflowError, RuntimeError, ValueError):
        raise ContextError("A token id of the context is too large for int64; pass the tokenizer's ids.") from None


def _check_id_tensor(ids: torch.Tensor, vocabulary: int) -> torch.Tensor:
    """`ids` as 1-D int64 on the CPU, every one a token of the tokenizer's `vocabulary` (0..vocabulary-1)."""
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ContextError(
            f"A tensor context must be 1-D token ids (or [1, n]); got shape {tuple(ids.shape)}. "
            "For one context per batch row, pass a list of contexts to generate()."
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ContextError(f"A tensor context must hold integer token ids; got dtype {ids.dtype}.")
    if ids.numel() == 0:
        raise ContextError("The context holds no tokens; there is nothing to read.")
    ids = ids.to(device="cpu", dtype=torch.long)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocabulary:
        bad = low if low < 0 else high
        raise ContextError(f"Token id {bad} of the context is not a token of this tokenizer (ids run 0.."
                           f"{vocabulary - 1}); pass ids from the model's own tokenizer, or pass the text.")
    return ids
