"""Sliding-window attention layers (Gemma-3, Mistral, ...) and what compressed reading can do with them.

A sliding layer lets a token see only the last `window` positions. Raw reading re-reads a chunk with
the model itself, so it is right for any layer. Compressed reading hands the block to the model as a
cache prefix; within a batch of reads, rows are padded between the prefix and the prompt, and
transformers places a sliding layer's window by the cache index, not by each row's positions, so a
read whose span exceeds the window would be attended differently from the raw text. Compressed reading
is therefore allowed only when a whole read (prefix, chunk, update prompt with the notes, and what it
writes) fits in the window; otherwise it is refused with what to do. Any model is also refused settings
under which a single read cannot fit its context window at all (`check_read_fits`).
"""

from __future__ import annotations

from transformers import PreTrainedModel

from ..config import ConfigError, MemoryConfig, NotesConfig
from ..errors import ContextError

PROMPT_ALLOWANCE = 160  # tokens of an update prompt besides the notes: the question and the instructions


def sliding_window(model: PreTrainedModel) -> int | None:
    """The window of the model's sliding-window layers, or None when every layer attends to everything."""
    text = model.config.get_text_config()
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None)
    if window is None or (types is not None and "sliding_attention" not in types):
        return None
    return int(window)


def read_span(config: MemoryConfig, prefix_tokens: int = 32) -> int:
    """An upper bound on the tokens one compressed read spans: prefix, chunk, prompt with the notes, output."""
    return prefix_tokens + config.chunking.size + config.notes.max_tokens + config.notes.budget + PROMPT_ALLOWANCE


def check_sliding_window(model: PreTrainedModel, config: MemoryConfig) -> None:
    """Refuse compressed reading on a model whose sliding window is shorter than a read."""
    window = sliding_window(model)
    if window is None or config.reading.mode != "compressed":
        return
    span = read_span(config)
    if span > window:
        raise ConfigError(
            f"This model's sliding-window layers see only the last {window} tokens, but a compressed read spans up to "
            f"{span} (chunks of {config.chunking.size}, notes of up to {config.notes.max_tokens} tokens): transformers "
            "would place the window by cache index rather than position, and the block would be read differently "
            "from its text. Use reading mode 'raw' (the default), or chunks and notes that fit in the window."
        )


def check_read_fits(model: PreTrainedModel, config: MemoryConfig) -> None:
    """Refuse settings under which a read cannot fit in the model's context window once the notes are full:
    the chunk, the notes (`notes.max_tokens`), the update prompt and what a read may write (`notes.budget`)."""
    window = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if window is None:
        return
    notes = config.notes
    need = config.chunking.size + notes.max_tokens + notes.budget + PROMPT_ALLOWANCE
    if need > window:
        raise ConfigError(
            f"A read needs up to {need} tokens (chunks of {config.chunking.size}, notes of up to {notes.max_tokens}, "
            f"up to {notes.budget} written per read, about {PROMPT_ALLOWANCE} of prompt), more than this model's "
            f"{window}-token window: use smaller chunks (ChunkingConfig(size=...)), shorter notes "
            "(NotesConfig(max_tokens=...)) or fewer tokens per read (NotesConfig(note_tokens=...))."
        )


def check_question(
    model: PreTrainedModel,
    question_tokens: int,
    block_tokens: int,
    instruction_tokens: int,
    notes: NotesConfig,
    compressed: bool,
) -> None:
    """Refuse a question too long to be read with: a read holds a block (up to `block_tokens`, its prefix
    included), the update prompt's own words (`instruction_tokens`), the notes (`notes.max_tokens`), what it
    writes (`notes.budget`) and the question, inside the model's window (the sliding window when `compressed`
    reading meets sliding layers). Said with the numbers, before any work: a question of a million characters
    would otherwise run for minutes, or overflow the window with only a warning from transformers."""
    window = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    sliding = sliding_window(model) if compressed else None
    window = min(w for w in (window, sliding) if w is not None) if window or sliding else None
    if window is None:
        return
    room = window - block_tokens - instruction_tokens - notes.max_tokens - notes.budget
    if question_tokens > room:
        raise ContextError(
            f"The question is {question_tokens} tokens; a read holds it with a block of up to {block_tokens} tokens, "
            f"{instruction_tokens} of instructions, notes of up to {notes.max_tokens} and up to {notes.budget} "
            f"written in this model's {window}-token window, so a question may take at most {max(room, 0)} "
            "tokens. Shorten the question, or put its long part in the context, where it is chunked and gated."
        )
