"""Token-exact chunking of a context, with offsets back to the text for traces."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from .errors import ContextError

Context = str | Sequence[str] | Sequence[int] | torch.Tensor
"""A long context: text, a list of documents, or token ids (list or 1-D tensor)."""


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
        texts = [item for item in context if isinstance(item, str)]
        if len(texts) == len(context):
            return [_tokenize_text(text, tokenizer, i) for i, text in enumerate(texts)]
        ids = [item for item in context if isinstance(item, int) and not isinstance(item, bool)]
        if len(ids) == len(context):
            return [(_check_id_tensor(_id_tensor(ids), len(tokenizer)), None)]
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
        raise ContextError(
            "A streamed context is an iterable of text pieces, not one string (it would be read one "
            "character at a time): pass text_pieces(path), or [text] for text already in memory."
        )


TOKENIZE_CHARS = 1 << 16
"""The most characters `stream_chunks` hands the tokenizer at once, where the text has spaces to cut before.

A fast tokenizer's work for one call is several hundred bytes a token (its `Encoding`, the Python lists
of ids and offsets), about 240 MiB for a 1 MiB piece, and freeing such blocks of many sizes leaves the
allocator's heap fragmented, so the process grew by some 30 MiB per million tokens; 64 KiB parts cost a
few MiB and reuse the same memory.
"""

_CUT = re.compile(r" (?=\S)")  # a space before a non-space: where `stream_chunks` may cut a piece
_PROBE = (
    " Probe: it's  two,   three\n\n a\n  b \n c\t d \u00a0e\u00a0 f 123  4567   89 naïve café — "
    "日本語 のテキスト 😀 ... (x) 'quoted'  \"end\".   "
)


def stream_chunks(
    pieces: Iterable[str], tokenizer: PreTrainedTokenizerBase, chunk_size: int, group: int
) -> Iterator[list[Chunk]]:
    """Chunks of a text that arrives in pieces, `group` full chunks at a time (the last group may be short).

    One piece is tokenized at a time, in parts of at most `TOKENIZE_CHARS` characters, each cut just
    before a space that comes before a non-space, where the tokenizer starts a word: the tokens and
    offsets are those of the whole piece (a tokenizer that does not tokenize such parts as it does the
    whole gets the whole piece). Only the tail of a chunk is carried over, as tensors, so memory holds a
    part and a group, never the whole text. Character spans count from the start of the stream.
    """
    check_pieces(pieces)
    with_offsets = tokenizer.is_fast
    part_chars = TOKENIZE_CHARS if _cuts_before_spaces_are_exact(tokenizer) else None
    carried_ids = torch.zeros(0, dtype=torch.long)
    carried_offsets = torch.zeros(0, 2, dtype=torch.long)
    start_token = char_base = 0
    pending: list[Chunk] = []
    for piece in pieces:
        if not isinstance(piece, str):
            raise ContextError(f"A streamed context must yield str pieces; got {type(piece).__name__}.")
        for part in _parts(piece, part_chars):
            encoded = tokenizer(part, add_special_tokens=False, return_offsets_mapping=with_offsets, verbose=False)
            carried_ids = torch.cat([carried_ids, torch.tensor(encoded["input_ids"], dtype=torch.long)])
            if with_offsets:
                offsets = torch.tensor(encoded["offset_mapping"], dtype=torch.long).reshape(-1, 2) + char_base
                carried_offsets = torch.cat([carried_offsets, offsets])
            char_base += len(part)
            del encoded
            used = 0
            while carried_ids.numel() - used >= chunk_size:
                end = used + chunk_size
                span = (int(carried_offsets[used, 0]), int(carried_offsets[end - 1, 1])) if with_offsets else None
                pending.append(Chunk(carried_ids[used:end].clone(), 0, start_token, span))
                used, start_token = end, start_token + chunk_size
                if len(pending) == group:
                    yield pending
                    pending = []
            carried_ids, carried_offsets = carried_ids[used:], carried_offsets[used:]
    if carried_ids.numel():
        span = (int(carried_offsets[0, 0]), int(carried_offsets[-1, 1])) if with_offsets else None
        pending.append(Chunk(carried_ids.clone(), 0, start_token, span))
    if not pending and not start_token:
        raise ContextError("The streamed context holds no tokens; there is nothing to read.")
    if pending:
        yield pending


def text_pieces(path: str | Path, piece_chars: int = 1 << 20) -> Iterator[str]:
    """A UTF-8 text file in pieces of about `piece_chars` characters, each cut just before a space that comes
    before a non-space (where a word starts), so the pieces tokenize as the whole text does."""
    if isinstance(piece_chars, bool) or not isinstance(piece_chars, int) or piece_chars < 1:
        raise ValueError(f"piece_chars must be a positive number of characters, got {piece_chars!r}.")
    with open(path, encoding="utf-8") as handle:
        tail = ""
        while block := handle.read(piece_chars):
            text = tail + block
            cut = _last_cut(text, 1, len(text))
            if cut <= 0:
                tail = text
                continue
            yield text[:cut]
            tail = text[cut:]
        if tail:
            yield tail


def _parts(piece: str, limit: int | None) -> Iterator[str]:
    """`piece` in parts of at most `limit` characters, each cut just before a space that comes before a
    non-space (where a tokenizer that splits words as GPT-2's does ends one word and starts another); a
    stretch with no such space runs on to the next one. One part when `limit` is None."""
    start = 0
    if limit is not None:
        while len(piece) - start > limit:
            cut = _last_cut(piece, start + 1, start + limit + 1)
            if cut < 0:
                later = _CUT.search(piece, start + limit + 1)
                if later is None:
                    break
                cut = later.start()
            yield piece[start:cut]
            start = cut
    yield piece[start:]


def _last_cut(text: str, start: int, end: int) -> int:
    """The last space of `text[start:end]` that comes before a non-space (seen in `text`), or -1."""
    cut = text.rfind(" ", start, end)
    while cut >= 0 and (cut + 1 == len(text) or text[cut + 1].isspace()):
        cut = text.rfind(" ", start, cut)
    return cut


def _cuts_before_spaces_are_exact(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether tokenizing a text in parts cut just before each space that comes before a non-space gives the
    tokens and offsets of the whole text, tried on a short probe (it does for byte-level BPE like GPT-2's,
    Llama-3's or SmolLM2's; not where runs of spaces are tokens, as in Gemma's)."""
    with_offsets = tokenizer.is_fast
    whole = tokenizer(_PROBE, add_special_tokens=False, return_offsets_mapping=with_offsets, verbose=False)
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    base = 0
    for part in _parts(_PROBE, 1):
        encoded = tokenizer(part, add_special_tokens=False, return_offsets_mapping=with_offsets, verbose=False)
        ids += encoded["input_ids"]
        if with_offsets:
            offsets += [(base + a, base + b) for a, b in encoded["offset_mapping"]]
        base += len(part)
    if ids != list(whole["input_ids"]):
        return False
    return not with_offsets or offsets == [tuple(offset) for offset in whole["offset_mapping"]]


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
        raise ContextError(
            f"Token id {bad} of the context is not a token of this tokenizer (ids run 0.."
            f"{vocabulary - 1}); pass ids from the model's own tokenizer, or pass the text."
        )
    return ids
