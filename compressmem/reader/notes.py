"""The notes (the working memory): how one read's output becomes the next notes, always within `max_tokens`."""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerBase

from ..config import NotesConfig

_WORD = re.compile(r"\w+")


def grounding(note: str, section: str, question: str) -> float:
    """Share of the note's new words (not in the question, longer than one character) that occur in
    the section: 1.0 for a quote, 0.0 for a note that only restates the question or invents its answer."""
    asked = set(_WORD.findall(question.lower()))
    words = [w for w in _WORD.findall(note.lower()) if len(w) > 1 and w not in asked]
    if not words:
        return 0.0
    vocabulary = set(_WORD.findall(section.lower()))
    return sum(word in vocabulary for word in words) / len(words)


def update_notes(notes: str, output: str, section: str, question: str, config: NotesConfig,
                 tokenizer: PreTrainedTokenizerBase) -> str:
    """The notes after a read whose generated text was `output`."""
    if config.update == "rewrite":
        return _keep_tokens(output.strip(), config.max_tokens, tokenizer, keep="head")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    note = lines[0] if lines else ""
    if not note or note.upper().startswith("NONE") or note in notes:
        return notes
    if grounding(note, section, question) < config.min_grounding:
        return notes
    joined = f"{notes}\n{note}" if notes else note
    return _keep_tokens(joined, config.max_tokens, tokenizer, keep="tail")


def _keep_tokens(text: str, limit: int, tokenizer: PreTrainedTokenizerBase, keep: str) -> str:
    """Cut `text` to `limit` tokens, keeping its head (a rewrite) or its tail (the newest notes)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) <= limit:
        return text
    kept = ids[:limit] if keep == "head" else ids[-limit:]
    return tokenizer.decode(kept, skip_special_tokens=True).strip()
