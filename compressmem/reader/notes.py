"""The notes (the working memory): how one read's output becomes the next notes, always within `max_tokens`."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..config import DEFAULT_MIN_GROUNDING, NotesConfig
from ..hf.tokens import decode_text
from .quotes import Quote, find_quote


def update_notes(
    notes: str,
    output: str,
    section: str,
    question: str,
    config: NotesConfig,
    tokenizer: PreTrainedTokenizerBase,
    within: tuple[int, int] | None = None,
) -> tuple[str, Quote | None]:
    """The notes after a read whose generated text was `output`, and the sentence of `section` added to them.

    `append`: the sentence of the section the output was drawn from (`find_quote`, among the sentences that
    overlap the characters `within`, the block read, when `section` also holds its neighbours' text), added
    when it is new and bears on the question, so every note is a sentence of the text with a place in it.
    `rewrite`: the output replaces the notes (no source)."""
    if config.update == "rewrite":
        return _keep_tokens(output.strip(), config.max_tokens, tokenizer, keep="head"), None
    min_support = DEFAULT_MIN_GROUNDING if config.min_grounding is None else config.min_grounding
    quote = find_quote(output, section, question, notes, min_support, within)
    if quote is None:
        return notes, None
    sentence = section[quote.start : quote.end]
    if sentence in notes:
        return notes, None
    lines = [*notes.splitlines(), sentence] if notes else [sentence]
    while len(lines) > 1 and _count(tokenizer, "\n".join(lines)) > config.max_tokens:
        lines.pop(0)  # the oldest notes make way, whole
    return _keep_tokens(lines[0], config.max_tokens, tokenizer, keep="tail") if len(lines) == 1 else "\n".join(
        lines
    ), quote


def _count(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _keep_tokens(text: str, limit: int, tokenizer: PreTrainedTokenizerBase, keep: str) -> str:
    """Cut `text` to at most `limit` tokens, keeping its head (a rewrite) or its tail (one over-long note)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    size = limit
    while len(ids) > limit and size > 0:  # decoding a cut and encoding it again can add a token: cut until it fits
        ids = ids[:size] if keep == "head" else ids[len(ids) - size :]
        text = decode_text(tokenizer, ids, skip_special_tokens=True).strip()
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        size -= 1
    return text
