"""`MemoryConfig`: every knob of the compress -> gate -> reason pipeline, serialisable to JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPRESSORS = ("select", "learned", "none")
SCORES = ("keynorm", "observed", "window")
GATES = ("attention", "lexical", "head", None)
READ_ORDERS = ("document", "score")
READ_MODES = ("compressed", "raw")
MEMORY_UPDATES = ("append", "rewrite")

MEMAGENT_CHUNK_SIZE = 2048

DEFAULT_SECTION_HEADER = "Here is one section of a long document:\n\n"
DEFAULT_UPDATE_TEMPLATE = (
    "\n\nQuestion: {question}\nNotes so far: {memory}\n\n"
    "Quote the exact sentence of the section above that answers the question, or reply NONE if the "
    "section does not answer it."
)
REWRITE_UPDATE_TEMPLATE = (
    "\n\nQuestion: {question}\nNotes so far: {memory}\n\n"
    "Write the updated notes: keep the notes so far and add every fact from the section above that "
    "helps answer the question. If the section has nothing relevant, repeat the notes so far."
)
DEFAULT_ANSWER_TEMPLATE = "Notes taken while reading a long document: {memory}\n\n{question}"
DEFAULT_GATE_TEMPLATE = "{question}\n{memory}"
DEFAULT_EMPTY_MEMORY = "(none yet)"


class ConfigError(ValueError):
    """A `MemoryConfig` value is out of range or of the wrong kind."""


@dataclass
class MemoryConfig:
    """How a long context is chunked, compressed, gated and read.

    Working memory: with `memory_update="append"` (default) each read quotes the section's evidence
    and the quote joins the notes only if at least `min_grounding` of its words occur in the section
    (small models otherwise invent "facts" from irrelevant sections); with `"rewrite"` the model
    rewrites the whole memory each step, as in the paper and MemAgent. Either way the memory is
    capped at `memory_tokens` tokens.

    Gates: `"lexical"` (BM25, no KV needed), `"attention"` (training-free, over compressed keys) and
    `"head"` (a trained `GateHead`, loaded from a checkpoint's `gate_head.safetensors`). A block passes
    when it is among the `gate_top_k` best and scores at least `gate_threshold`. `read_order="document"`
    reads the passing blocks in document order (the paper's linear scan, plus an optional `recall`
    pass); `"score"` re-scores every block after each update and reads the best unread block over
    `gate_threshold` next (no top-k), so a later hop can send the reader back to an earlier block.

    `fixed_update_tokens=True` makes every update decode exactly its budget (`note_tokens`, or
    `memory_tokens` when rewriting), ignoring end-of-sequence, so that timing comparisons decode the
    same number of tokens per step on both sides.

    The defaults are the cheapest configuration that met the project's accuracy bar on
    SmolLM2-135M-Instruct without trained weights (see the README's measurements). Use
    `MemoryConfig.memagent()` for the MemAgent baseline: no compression, no gate, every chunk read.
    """

    chunk_size: int = 512
    compressor: str = "select"
    ratio: float = 4.0
    score: str = "keynorm"
    gate: str | None = "lexical"
    gate_threshold: float | None = None
    gate_top_k: int | None = 1
    gate_layers: tuple[int, ...] | None = None
    gate_sharpness: float = 8.0
    memory_tokens: int = 1024
    memory_update: str = "append"
    note_tokens: int = 96
    min_grounding: float = 0.8
    fixed_update_tokens: bool = False
    max_steps: int | None = None
    read_order: str = "document"
    recall: bool = False
    read: str = "raw"
    compress_batch_size: int = 4
    direct_max_tokens: int | None = None
    query_tokens: int = 256
    section_header: str = DEFAULT_SECTION_HEADER
    update_template: str | None = None
    answer_template: str = DEFAULT_ANSWER_TEMPLATE
    gate_template: str = DEFAULT_GATE_TEMPLATE
    empty_memory: str = DEFAULT_EMPTY_MEMORY

    def __post_init__(self) -> None:
        if self.gate_layers is not None:
            self.gate_layers = tuple(self.gate_layers)
        self.validate()

    @classmethod
    def memagent(cls, **overrides: Any) -> "MemoryConfig":
        """The MemAgent baseline: raw chunks, no compression, no gate; every chunk is read in order.

        MemAgent reads large chunks (5000 tokens in its paper) to keep the number of steps down; the
        default here, 2048, is the largest at which SmolLM2-135M still quotes a chunk's evidence.
        """
        settings: dict[str, Any] = dict(chunk_size=MEMAGENT_CHUNK_SIZE, compressor="none", ratio=1.0, gate=None,
                                        gate_top_k=None, read="raw")
        settings.update(overrides)
        return cls(**settings)

    @property
    def resolved_update_template(self) -> str:
        """`update_template`, or the default for the `memory_update` mode when unset."""
        if self.update_template is not None:
            return self.update_template
        return DEFAULT_UPDATE_TEMPLATE if self.memory_update == "append" else REWRITE_UPDATE_TEMPLATE

    @property
    def gate_needs_keys(self) -> bool:
        """Whether the gate scores blocks by their compressed keys (the attention gate and the head)."""
        return self.gate in ("attention", "head")

    @property
    def needs_kv(self) -> bool:
        """Whether the bank must hold compressed KV (for a key-reading gate or for compressed reading)."""
        return self.gate_needs_keys or self.read == "compressed"

    def validate(self) -> None:
        """Raise `ConfigError` naming the field, the bad value and what is allowed."""
        _positive_int("chunk_size", self.chunk_size)
        _choice("compressor", self.compressor, COMPRESSORS)
        _choice("score", self.score, SCORES)
        _choice("gate", self.gate, GATES)
        _choice("read", self.read, READ_MODES)
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not self.ratio >= 1:
            raise ConfigError(f"ratio must be a number >= 1 (1 keeps every KV entry), got {self.ratio!r}.")
        if self.compressor == "none" and self.ratio != 1:
            raise ConfigError(f"compressor='none' keeps every KV entry, so ratio must be 1, got {self.ratio!r}.")
        if self.gate_threshold is not None and not 0.0 <= self.gate_threshold <= 1.0:
            raise ConfigError(f"gate_threshold must lie in [0, 1], got {self.gate_threshold!r}.")
        if self.gate_top_k is not None:
            _positive_int("gate_top_k", self.gate_top_k)
        if self.gate is not None and self.gate_threshold is None and self.gate_top_k is None:
            raise ConfigError(f"gate={self.gate!r} needs gate_top_k or gate_threshold; set one, or gate=None.")
        if self.gate_layers is not None and (
                not self.gate_layers or any(isinstance(i, bool) or not isinstance(i, int) for i in self.gate_layers)):
            raise ConfigError(f"gate_layers must be a non-empty list of layer indices, got {self.gate_layers!r}.")
        if isinstance(self.gate_sharpness, bool) or not isinstance(self.gate_sharpness, (int, float)) \
                or not self.gate_sharpness > 0:
            raise ConfigError(f"gate_sharpness must be a positive number, got {self.gate_sharpness!r}.")
        _positive_int("memory_tokens", self.memory_tokens)
        _choice("memory_update", self.memory_update, MEMORY_UPDATES)
        _positive_int("note_tokens", self.note_tokens)
        if isinstance(self.min_grounding, bool) or not isinstance(self.min_grounding, (int, float)) \
                or not 0.0 <= self.min_grounding <= 1.0:
            raise ConfigError(f"min_grounding must lie in [0, 1], got {self.min_grounding!r}.")
        if self.max_steps is not None:
            _positive_int("max_steps", self.max_steps)
        _choice("read_order", self.read_order, READ_ORDERS)
        if self.read_order == "score" and (self.gate is None or self.gate_top_k is not None):
            raise ConfigError("read_order='score' reads, after each update, the best unread block whose gate score "
                              "is at least gate_threshold: set gate, gate_threshold and gate_top_k=None (and "
                              f"max_steps to bound the reads); got gate={self.gate!r}, gate_top_k={self.gate_top_k!r}.")
        _positive_int("compress_batch_size", self.compress_batch_size)
        if self.direct_max_tokens is not None:
            _positive_int("direct_max_tokens", self.direct_max_tokens)
        _positive_int("query_tokens", self.query_tokens)
        for name in ("recall", "fixed_update_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.update_template is not None:
            _template("update_template", self.update_template, ("question",))
        for name, keys in ( ("answer_template", ("question", "memory")),
                           ("gate_template", ("question",))):
            _template(name, getattr(self, name), keys)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["gate_layers"] is not None:
            data["gate_layers"] = list(data["gate_layers"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemoryConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown MemoryConfig fields {unknown}; known fields are {sorted(known)}.")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json_string() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "MemoryConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}.")


def _template(name: str, value: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {type(value).__name__}.")
    missing = [k for k in keys if "{" + k + "}" not in value]
    if missing:
        raise ConfigError(f"{name} must contain the placeholders {['{' + k + '}' for k in missing]}.")
