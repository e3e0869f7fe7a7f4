"""Settings of the pipeline, one small dataclass per stage: chunking -> compression -> gate -> reading -> notes.

Each stage's dataclass holds only what that stage reads, and `MemoryConfig` refuses a combination in
which a setting would be silently ignored (a compressor when nothing reads compressed KV, gate
layers for the lexical gate, a recall pass without a gate, ...), naming the setting and what to do.
Stage settings left at `None` take the stage's default when the stage runs, so a configuration
written to JSON holds what each stage really used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

COMPRESSION_METHODS = ("none", "select", "learned")
BITS = (16, 8, 4, 2)
DEFAULT_GROUP = 64  # 4 bits at 64: 0.297x bf16 KV with scales, needles as raw (benchmarks/RESULTS.md)
DEFAULT_KEEP_BITS = 8  # reads of kept KV: needles as raw reads, 1.5x faster a question (benchmarks/RESULTS.md)
DEFAULT_KEEP_MIB = 256  # per bank: 40 blocks of 512 tokens of SmolLM2-135M's KV at 8 bits
SCORES = ("keynorm", "observed", "window")
# Gate kinds GateConfig accepts, and whether each scores blocks by their compressed keys (so a bank must hold
# them). Filled by the gates themselves (`compressmem.gate.register`), so that a new gate is one file.
GATE_KINDS: dict[str, bool] = {}
READ_MODES = ("raw", "compressed")
READ_ORDERS = ("document", "score")
READ_UNTIL = ("answered", "all")
JUDGES = ("auto", "grounding", "model")
NOTE_UPDATES = ("append", "rewrite")

DEFAULT_TOP_K = 4  # reads at most: adaptive reading stops at the first block whose quote answers (README)
DEFAULT_RATIO = 4.0
DEFAULT_SCORE = "keynorm"
DEFAULT_SHARPNESS = 8.0
SHARPNESS_RANGE = (0.01, 1000.0)  # beyond it the attention gate's log-sum-exp over- or underflows in float32
DEFAULT_NOTE_TOKENS = 48
DEFAULT_MIN_GROUNDING = 0.8
MEMAGENT_CHUNK_SIZE = 5000  # MemAgent's chunk (its paper and its evaluation's RECURRENT_CHUNK_SIZE)
MEMAGENT_NOTES_TOKENS = 1024  # MemAgent's memory: at most 1024 tokens written per update (RECURRENT_MAX_NEW)

DEFAULT_SECTION_HEADER = "Here is one section of a long document:\n\n"
APPEND_TEMPLATE = (
    "\n\nQuestion: {question}\nNotes so far: {notes}\n\n"
    "Quote the exact sentence of the section above that answers the question, or reply NONE if the "
    "section does not answer it."
)
REWRITE_TEMPLATE = (
    "\n\nQuestion: {question}\nNotes so far: {notes}\n\n"
    "Write the updated notes: keep the notes so far and add every fact from the section above that "
    "helps answer the question. If the section has nothing relevant, repeat the notes so far."
)
# measured against "Notes taken while reading a long document: {notes}\n\n{question}" (release 0.3): with the
# evidence sentence as notes, SmolLM2-135M's answers held the gold answer 16/16 both ways, and were grounded in the
# notes 11/16 against 7/16 (benchmarks/RESULTS.md)
DEFAULT_ANSWER_TEMPLATE = (
    "Read the notes, then answer the question with the words of the notes, in one sentence.\n\n"
    "Notes: {notes}\n\nQuestion: {question}\nAnswer:"
)
DEFAULT_GATE_TEMPLATE = "{question}\n{notes}"
DEFAULT_EMPTY_NOTES = "(none yet)"
DEFAULT_NOT_FOUND = "Not found in the context."
DEFAULT_QUOTE_TEMPLATE = 'The context says: "{quote}"'

# MemAgent's prompts (Yu et al. 2025, "MemAgent: Reshaping Long-Context LLM with Multi-Conv RL-based Memory
# Agent"; github.com/BytedTsinghua-SIA/MemAgent, `TEMPLATE`, `TEMPLATE_FINAL` and `NO_MEMORY` of
# taskutils/memory_eval/utils/recurrent.py, the same update text as recurrent/impls/memory.py), reproduced as data
# with attribution. Their update prompt is one user turn: instructions, <problem>, <memory>, <section> (the chunk),
# "Updated memory:". Here a chunk is read as the prefix of the update (a bank's chunk is tokenized, and may be
# kept as KV, once for every question), so the chunk moves up: the header is their instructions and the
# <section> opening, the chunk follows, and the update prompt closes the section, then gives <problem> and
# <memory> in their words. The text is theirs; only the order of the three tagged parts differs.
MEMAGENT_SECTION_HEADER = (
    "You are presented with a problem, a section of an article that may contain the answer to the problem, and "
    "a previous memory. Please read the provided section carefully and update the memory with the new "
    "information that helps to answer the problem. Be sure to retain all relevant details from the previous "
    "memory while adding any new, useful information.\n\n<section>\n"
)
MEMAGENT_UPDATE_TEMPLATE = (
    "\n</section>\n\n<problem> \n{question}\n</problem>\n\n<memory>\n{notes}\n</memory>\n\nUpdated memory:\n"
)
MEMAGENT_ANSWER_TEMPLATE = (
    "You are presented with a problem and a previous memory. Please answer the problem based on the previous "
    'memory and format your response as follows "Therefore, the answer is (insert answer here)".\n\n'
    "<problem> \n{question}\n</problem>\n\n<memory>\n{notes}\n</memory>\n\nYour answer:\n"
)
MEMAGENT_EMPTY_NOTES = "No previous memory"
MEMAGENT_ANSWER_MARKER = "the answer is"  # MemAgent's evaluation scores the text after its last occurrence


@dataclass(frozen=True)
class ChunkingConfig:
    """How the context is cut: `size` tokens per chunk (the last chunk of a document may be shorter)."""

    size: int = 512

    def __post_init__(self) -> None:
        _positive_int("chunking.size", self.size)


@dataclass(frozen=True)
class CompressionConfig:
    """How a chunk becomes a block of KV: `none` keeps every entry (ratio 1), `select` keeps the `1/ratio`
    entries a training-free `score` ranks highest, `learned` keeps the KV of one trained memory token per
    `ratio` chunk tokens (it needs a checkpoint's compressor). Any of them stores its KV in `bits` bits
    (16: as computed; 8, 4 or 2: quantized, keys per channel and values per token, in groups of `group`)."""

    method: str = "select"
    ratio: float | None = None
    score: str | None = None
    bits: int = 16
    group: int | None = None

    def __post_init__(self) -> None:
        self._check_method()
        _choice("compression.bits", self.bits, BITS)
        if self.bits == 16:
            if self.group is not None:
                raise ConfigError(
                    "compression.group sizes the groups of quantized KV; with bits=16 nothing is "
                    "quantized and it would be ignored: drop it, or set bits to 8, 4 or 2."
                )
            return
        _set(self, "group", DEFAULT_GROUP if self.group is None else self.group)
        _positive_int("compression.group", self.group)

    def _check_method(self) -> None:
        _choice("compression.method", self.method, COMPRESSION_METHODS)
        if self.method == "none":
            if self.ratio not in (None, 1):
                raise ConfigError(
                    f"compression.method='none' keeps every KV entry, so compression.ratio must be 1, "
                    f"got {self.ratio!r}."
                )
            _set(self, "ratio", 1.0)
        else:
            ratio = DEFAULT_RATIO if self.ratio is None else self.ratio
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 1 <= ratio < math.inf:
                raise ConfigError(f"compression.ratio must be a finite number >= 1, got {self.ratio!r}.")
            _set(self, "ratio", float(ratio))
        if self.method == "select":
            _set(self, "score", DEFAULT_SCORE if self.score is None else self.score)
            _choice("compression.score", self.score, SCORES)
        elif self.score is not None:
            raise ConfigError(
                f"compression.score ranks entries for method='select' only; it would be ignored with "
                f"method={self.method!r}: drop it."
            )


@dataclass(frozen=True)
class GateConfig:
    """Which blocks get read: `lexical` (BM25 over each block's text, needs no KV), `semantic` (BM25 fused with
    the similarity of sentence embeddings by `embedder`, a sentence-transformers model name or folder; None: the
    packaged all-MiniLM-L6-v2), `attention` (training-free, over the compressed keys at `layers`, sharpened by
    `sharpness`) or `head` (a trained `GateHead` from a checkpoint, with its own layers). A block passes when it
    is among the `top_k` best and scores at least `threshold` (either may be None, not both)."""

    kind: str = "semantic"
    top_k: int | None = DEFAULT_TOP_K
    threshold: float | None = None
    layers: tuple[int, ...] | None = None
    sharpness: float | None = None
    embedder: str | None = None

    def __post_init__(self) -> None:
        _choice("gate.kind", self.kind, tuple(GATE_KINDS))
        if self.embedder is not None:
            if self.kind != "semantic":
                raise ConfigError(f"gate.embedder applies to kind='semantic' only (got kind={self.kind!r}); drop it.")
            if not isinstance(self.embedder, str) or not self.embedder.strip():
                raise ConfigError(f"gate.embedder must name a sentence-transformers model, got {self.embedder!r}.")
        if self.top_k is not None:
            _positive_int("gate.top_k", self.top_k)
        if self.threshold is not None and (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, (int, float))
            or not 0.0 <= self.threshold <= 1.0
        ):
            raise ConfigError(f"gate.threshold must lie in [0, 1], got {self.threshold!r}.")
        if self.top_k is None and self.threshold is None:
            raise ConfigError(f"gate kind {self.kind!r} needs gate.top_k or gate.threshold; set one, or use gate=None.")
        if self.kind != "attention":
            for name in ("layers", "sharpness"):
                if getattr(self, name) is not None:
                    owner = "the trained head brings its own" if self.kind == "head" else "BM25 reads no keys"
                    raise ConfigError(f"gate.{name} applies to kind='attention' only ({owner}); drop it.")
            return
        if self.layers is not None:
            layers = tuple(self.layers)
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
                raise ConfigError(f"gate.layers must be a non-empty list of layer indices >= 0, got {self.layers!r}.")
            if len(set(layers)) != len(layers):
                raise ConfigError(f"gate.layers names a layer twice ({list(layers)}); list each layer once.")
            _set(self, "layers", layers)
        sharpness = DEFAULT_SHARPNESS if self.sharpness is None else self.sharpness
        low, high = SHARPNESS_RANGE
        if isinstance(sharpness, bool) or not isinstance(sharpness, (int, float)) or not low <= sharpness <= high:
            raise ConfigError(
                f"gate.sharpness must be a number from {low:g} to {high:g} (beyond, the gate's scores over- or "
                f"underflow to NaN), got {self.sharpness!r}."
            )
        _set(self, "sharpness", float(sharpness))

    @property
    def reads_keys(self) -> bool:
        """Whether this gate scores blocks by their compressed keys (the attention gate and the head)."""
        return GATE_KINDS[self.kind]


@dataclass(frozen=True)
class ReadingConfig:
    """How passed blocks are read: `mode` `raw` re-reads the chunk's tokens, `compressed` reads the block's
    KV as a prefix (the paper). `order` `document` reads the passing blocks in document order (then, with
    `recall`, the best unread ones); `score` re-scores after every update (the notes join the question) and
    reads the best unread block the gate passes (at most `top_k` reads); None is `score` with a gate,
    `document` without a gate or with `recall`.
    `until` `answered` writes an answer from the notes after every read that added one and stops at the
    first that `judge` finds grounded in them (a question asking for "all" reads every passed block, then
    is answered); `all` reads every block the gate passes, then answers. `judge`: `grounding` (what the
    answer asserts must be in the notes, `reader.judge.GroundingJudge`), `model` (the model's own yes/no
    judgement), `auto` (the model's judgement when it decides every calibration case right, else the
    grounding check; the trace says which ran and why). `max_steps` bounds the reads per question.

    `keep_bits` (raw reading): a raw read's KV of the chunk is kept with the bank, in memory, quantized to
    8, 4 or 2 bits in groups of `DEFAULT_GROUP`, and a later read of the same block reads that KV instead
    of pre-filling the chunk again; at most `keep_mib` MiB per bank (default `DEFAULT_KEEP_MIB`), least
    recently read out first. 0 keeps nothing; None is `DEFAULT_KEEP_BITS` for raw reading, 0 otherwise."""

    mode: str = "raw"
    order: str | None = None
    recall: bool = False
    max_steps: int | None = None
    keep_bits: int | None = None
    keep_mib: int | None = None
    until: str = "answered"
    judge: str = "auto"

    def __post_init__(self) -> None:
        _choice("reading.mode", self.mode, READ_MODES)
        _choice("reading.judge", self.judge, JUDGES)
        if self.order is not None:
            _choice("reading.order", self.order, READ_ORDERS)
        _choice("reading.until", self.until, READ_UNTIL)
        if not isinstance(self.recall, bool):
            raise ConfigError(f"reading.recall must be True or False, got {self.recall!r}.")
        if self.max_steps is not None:
            _positive_int("reading.max_steps", self.max_steps)
        if self.keep_bits is None:
            _set(self, "keep_bits", DEFAULT_KEEP_BITS if self.mode == "raw" else 0)
        _choice("reading.keep_bits", self.keep_bits, (0, *BITS[1:]))
        if self.keep_bits == 0:
            if self.keep_mib is not None:
                raise ConfigError(
                    "reading.keep_mib bounds the KV kept by keep_bits, which is 0: set keep_bits "
                    "(8, 4 or 2) or drop keep_mib."
                )
            return
        if self.mode != "raw":
            raise ConfigError(
                "reading.keep_bits keeps the KV of raw reads; compressed reading already reads "
                "the bank's KV. Drop keep_bits or use mode='raw'."
            )
        _set(self, "keep_mib", DEFAULT_KEEP_MIB if self.keep_mib is None else self.keep_mib)
        _positive_int("reading.keep_mib", self.keep_mib)


@dataclass(frozen=True)
class NotesConfig:
    """The working memory: `append` adds one quote per read, kept only if at least `min_grounding` of its
    new words occur in the section (`note_tokens` per quote); `rewrite` has the model rewrite all its notes
    each read (the paper, MemAgent). Either way the notes keep at most `max_tokens` tokens."""

    update: str = "append"
    max_tokens: int = 1024
    note_tokens: int | None = None
    min_grounding: float | None = None

    def __post_init__(self) -> None:
        _choice("notes.update", self.update, NOTE_UPDATES)
        _positive_int("notes.max_tokens", self.max_tokens)
        if self.update == "rewrite":
            for name in ("note_tokens", "min_grounding"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"notes.{name} applies to update='append' only (a rewrite writes up to "
                        "max_tokens and is not checked against the section); drop it."
                    )
            return
        _set(self, "note_tokens", DEFAULT_NOTE_TOKENS if self.note_tokens is None else self.note_tokens)
        _positive_int("notes.note_tokens", self.note_tokens)
        grounding = DEFAULT_MIN_GROUNDING if self.min_grounding is None else self.min_grounding
        if isinstance(grounding, bool) or not isinstance(grounding, (int, float)) or not 0.0 <= grounding <= 1.0:
            raise ConfigError(f"notes.min_grounding must lie in [0, 1], got {self.min_grounding!r}.")
        _set(self, "min_grounding", float(grounding))

    @property
    def budget(self) -> int:
        """Tokens one read may write: a quote's, or the whole notes' when rewriting."""
        if self.update != "append":
            return self.max_tokens
        return DEFAULT_NOTE_TOKENS if self.note_tokens is None else self.note_tokens


@dataclass(frozen=True)
class PromptConfig:
    """The text around what the model reads: the header every chunk follows, the update prompt after a
    section (`{question}`, `{notes}`; None: the notes mode's own), the answer prompt, the gate's query,
    what stands in for empty notes, the answer given, without generating one, when no answer written from the
    notes is grounded in them (`not_found`; None: no check is made, an answer is generated from whatever notes
    there are, and `Trace.found` is None), and how the notes' sentences are given, marked as a quote, in place
    of an answer that found their value but said more than they do (`quote_template`, `{quote}`)."""

    section_header: str = DEFAULT_SECTION_HEADER
    update_template: str | None = None
    answer_template: str = DEFAULT_ANSWER_TEMPLATE
    gate_template: str = DEFAULT_GATE_TEMPLATE
    empty_notes: str = DEFAULT_EMPTY_NOTES
    not_found: str | None = DEFAULT_NOT_FOUND
    quote_template: str = DEFAULT_QUOTE_TEMPLATE

    def __post_init__(self) -> None:
        for name in ("section_header", "empty_notes"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"prompts.{name} must be a string, got {type(getattr(self, name)).__name__}.")
        if self.not_found is not None and (not isinstance(self.not_found, str) or not self.not_found.strip()):
            raise ConfigError(
                "prompts.not_found is what a user reads when the context does not hold the answer: a "
                f"non-empty string (or None to generate a guess anyway), got {self.not_found!r}."
            )
        if self.update_template is not None:
            _template("prompts.update_template", self.update_template, ("question",))
        _template("prompts.answer_template", self.answer_template, ("question", "notes"))
        _template("prompts.quote_template", self.quote_template, ("quote",), ("quote",))
        _template("prompts.gate_template", self.gate_template, ("question",))

    def update_for(self, notes: NotesConfig) -> str:
        """The update prompt: the configured one, or the default of the notes' update mode."""
        if self.update_template is not None:
            return self.update_template
        return APPEND_TEMPLATE if notes.update == "append" else REWRITE_TEMPLATE


_STAGES = {
    "chunking": ChunkingConfig,
    "compression": CompressionConfig,
    "gate": GateConfig,
    "reading": ReadingConfig,
    "notes": NotesConfig,
    "prompts": PromptConfig,
}


@dataclass(frozen=True)
class MemoryConfig:
    """How a long context is chunked, compressed, gated and read into notes.

    `compression` is None when nothing reads compressed KV (the lexical gate with raw reading): the bank
    then holds only token ids and compressing is tokenizing. It must be set when the gate reads keys
    (`attention`, `head`) or `reading.mode` is `compressed`. `gate=None` reads every block.

    `direct_max_tokens` and `query_tokens` rule `generate()` without a context: a prompt longer than
    `direct_max_tokens` (default: the model's window) is split into context and question, the question
    being its last user turn or its last `query_tokens` tokens.

    The defaults are the cheapest configuration that met the project's accuracy bar on
    SmolLM2-135M-Instruct without trained weights (README). `MemoryConfig.memagent()` is the MemAgent
    baseline: MemAgent's chunks, prompts and rewritten memory, every raw chunk read, no gate, no refusal.
    """

    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    compression: CompressionConfig | None = None
    gate: GateConfig | None = field(default_factory=GateConfig)
    reading: ReadingConfig = field(default_factory=ReadingConfig)
    notes: NotesConfig = field(default_factory=NotesConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    direct_max_tokens: int | None = None
    query_tokens: int = 256

    def __post_init__(self) -> None:
        for name, kind in _STAGES.items():
            value = getattr(self, name)
            if value is None and name in ("compression", "gate"):
                continue
            if not isinstance(value, kind):
                raise ConfigError(
                    f"{name} must be a {kind.__name__}"
                    + (" or None" if name in ("compression", "gate") else "")
                    + f", got {value!r}."
                )
        if self.direct_max_tokens is not None:
            _positive_int("direct_max_tokens", self.direct_max_tokens)
        _positive_int("query_tokens", self.query_tokens)
        self._check_compression()
        if self.reading.order is None:
            order = "document" if self.gate is None or self.reading.recall else "score"
            _set(self, "reading", dataclasses.replace(self.reading, order=order))
        self._check_reading()

    def _check_compression(self) -> None:
        users = self.kv_users
        if self.compression is None and users:
            raise ConfigError(
                f"{' and '.join(users)} {'read' if len(users) > 1 else 'reads'} compressed KV, but "
                "compression is None: set compression=CompressionConfig(...) (e.g. method='select', "
                "ratio=4)."
            )
        if self.compression is not None and not users:
            raise ConfigError(
                f"compression={self.compression.method!r} would be ignored: with "
                f"{'no gate' if self.gate is None else f'the {self.gate.kind} gate'} and raw reading, nothing reads "
                "compressed KV (the bank holds only token ids). Drop compression, or use a gate that reads keys "
                "(kind='attention' or 'head') or reading mode 'compressed'."
            )
        ratio = None if self.compression is None else self.compression.ratio
        if ratio is not None and ratio > self.chunking.size:
            raise ConfigError(
                f"compression.ratio {ratio:g} would keep less than one KV entry of a "
                f"{self.chunking.size}-token chunk: use a ratio of at most {self.chunking.size}, or "
                "larger chunks."
            )

    def _check_reading(self) -> None:
        reading, gate = self.reading, self.gate
        if reading.order == "score" and gate is None:
            raise ConfigError(
                "reading.order='score' reads, after each update, the best unread block the gate passes: "
                "it needs a gate (or use order='document' to read every block in order)."
            )
        if reading.recall and (gate is None or reading.order != "document"):
            raise ConfigError(
                "reading.recall re-visits the gate's best unread blocks after a document-order scan: it "
                f"needs a gate and order='document' (got gate={gate!r}, order={reading.order!r})."
            )

    @property
    def kv_users(self) -> list[str]:
        """The stages that read compressed KV: a key-reading gate, compressed reading; empty when none does."""
        users = []
        if self.gate is not None and self.gate.reads_keys:
            users.append(f"gate kind {self.gate.kind!r}")
        if self.reading.mode == "compressed":
            users.append("reading mode 'compressed'")
        return users

    @property
    def needs_kv(self) -> bool:
        """Whether banks must hold compressed KV (for a key-reading gate or for compressed reading)."""
        return bool(self.kv_users)

    @classmethod
    def memagent(cls, chunk_size: int = MEMAGENT_CHUNK_SIZE, **overrides: Any) -> MemoryConfig:
        """The MemAgent baseline (Yu et al. 2025), as its agent runs: chunks of 5000 tokens read raw, in order,
        every one (no compression, no gate, no early stop, no kept KV, and so no check of the question's terms
        before reading); a memory of at most 1024 tokens that the model rewrites after each chunk; MemAgent's
        update and answer prompts (`MEMAGENT_*`); and the answer always generated from the memory, never
        refused (`prompts.not_found=None`, so `Trace.found` and `Answer.found` are None: nothing was checked).

        Differences from MemAgent's own code, and why:
        - The chunk comes first in the update prompt (after MemAgent's instructions), then the problem and the
          memory, where MemAgent puts problem, memory, then section: here every read starts with its chunk as
          a prefix shared by all questions. The words of the prompts are MemAgent's.
        - Reads are greedy; MemAgent's evaluation samples its updates (temperature 0.7, top-p 0.95).
        - The answer prompt is its evaluation's ("Therefore, the answer is ..."); the eval runner scores the text
          after "the answer is", as MemAgent's evaluation does, and the whole answer when the phrase is missing.
        - A memory longer than 1024 tokens is cut to its first 1024 (MemAgent stops writing at 1024 tokens:
          the same memory).
        A read needs at most 5000 + 1024 + 1024 tokens plus the prompts (about 200 with SmolLM2's chat
        template), inside SmolLM2-135M's 8192-token window; a model with a smaller window needs a smaller
        `chunk_size` (the model refuses a configuration whose reads do not fit, naming the sizes).
        `overrides` replace whole stages (e.g. `notes=`), as in `MemoryConfig(...)`.
        """
        settings: dict[str, Any] = {
            "chunking": ChunkingConfig(chunk_size),
            "compression": None,
            "gate": None,
            "reading": ReadingConfig(until="all", keep_bits=0),
            "notes": NotesConfig(update="rewrite", max_tokens=MEMAGENT_NOTES_TOKENS),
            "prompts": PromptConfig(
                section_header=MEMAGENT_SECTION_HEADER,
                update_template=MEMAGENT_UPDATE_TEMPLATE,
                answer_template=MEMAGENT_ANSWER_TEMPLATE,
                empty_notes=MEMAGENT_EMPTY_NOTES,
                not_found=None,
            ),
        }
        settings.update(overrides)
        return cls(**settings)

    def ungated(self) -> MemoryConfig:
        """These settings without a gate: every block of a bank is read, in document order (an oracle reads
        exactly the evidence blocks this way). Compression is kept only if reading still needs it."""
        reading = dataclasses.replace(self.reading, order="document", recall=False)
        compression = self.compression if reading.mode == "compressed" else None
        return dataclasses.replace(self, gate=None, reading=reading, compression=compression)

    def replace(self, **changes: Any) -> MemoryConfig:
        """A copy with whole stages (or top-level settings) replaced, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.gate is not None and self.gate.layers is not None:
            data["gate"]["layers"] = list(self.gate.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryConfig:
        """The configuration `to_dict` wrote; unknown settings are refused by name."""
        if not isinstance(data, dict):
            raise ConfigError(f"A MemoryConfig must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hint = " (a flat 0.1 configuration: load it with MemoryConfig.from_legacy)" if "chunk_size" in data else ""
            raise ConfigError(f"Unknown MemoryConfig settings {unknown}{hint}; the settings are {sorted(known)}.")
        values = dict(data)
        for name, kind in _STAGES.items():
            if name in values and values[name] is not None:
                values[name] = _stage(name, kind, values[name])
        return cls(**values)

    @classmethod
    def from_legacy(cls, flat: dict[str, Any]) -> MemoryConfig:
        """Migrate a flat release-0.1 configuration (checkpoint format 1), dropping what its stages ignored."""
        return cls.from_dict(migrate_flat(flat))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json_string() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> MemoryConfig:
        """A configuration JSON file: this release's nested form, or release 0.1's flat one (migrated)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(
                f"{path} is not a JSON configuration ({error}); write one with MemoryConfig.save."
            ) from None
        try:
            return cls.from_legacy(data) if isinstance(data, dict) and "chunk_size" in data else cls.from_dict(data)
        except ConfigError as error:
            raise ConfigError(f"{path} is not a valid MemoryConfig: {error}") from None


_LEGACY_FIELDS = {
    "chunk_size",
    "compressor",
    "ratio",
    "score",
    "gate",
    "gate_threshold",
    "gate_top_k",
    "gate_layers",
    "gate_sharpness",
    "memory_tokens",
    "memory_update",
    "note_tokens",
    "min_grounding",
    "fixed_update_tokens",
    "max_steps",
    "read_order",
    "recall",
    "read",
    "compress_batch_size",
    "direct_max_tokens",
    "query_tokens",
    "section_header",
    "update_template",
    "answer_template",
    "gate_template",
    "empty_memory",
}


# The stage each release-0.1 flat setting moved to, for the warning that names the new form.
_LEGACY_STAGES = {
    "chunk_size": "chunking=ChunkingConfig(size=...)",
    "compressor": "compression=CompressionConfig(method=...)",
    "ratio": "compression=CompressionConfig(ratio=...)",
    "score": "compression=CompressionConfig(score=...)",
    "gate": "gate=GateConfig(kind=...)",
    "gate_threshold": "gate=GateConfig(threshold=...)",
    "gate_top_k": "gate=GateConfig(top_k=...)",
    "gate_layers": "gate=GateConfig(layers=...)",
    "gate_sharpness": "gate=GateConfig(sharpness=...)",
    "memory_tokens": "notes=NotesConfig(max_tokens=...)",
    "memory_update": "notes=NotesConfig(update=...)",
    "note_tokens": "notes=NotesConfig(note_tokens=...)",
    "min_grounding": "notes=NotesConfig(min_grounding=...)",
    "fixed_update_tokens": 'generate(..., notes_kwargs={"min_new_tokens": ...})',
    "max_steps": "reading=ReadingConfig(max_steps=...)",
    "read_order": "reading=ReadingConfig(order=...)",
    "recall": "reading=ReadingConfig(recall=...)",
    "read": "reading=ReadingConfig(mode=...)",
    "compress_batch_size": "compress(..., batch_size=...)",
    "section_header": "prompts=PromptConfig(section_header=...)",
    "update_template": "prompts=PromptConfig(update_template=...)",
    "answer_template": "prompts=PromptConfig(answer_template=...)",
    "gate_template": "prompts=PromptConfig(gate_template=...)",
    "empty_memory": "prompts=PromptConfig(empty_notes=...)",
}


def _accept_flat_settings(init: Any) -> Any:
    """`MemoryConfig.__init__` that also takes release 0.1's flat keywords (`MemoryConfig(chunk_size=512)`):
    read as 0.1 read them (`MemoryConfig.from_legacy`), with a `DeprecationWarning` naming the new form."""

    @functools.wraps(init)
    def __init__(self: MemoryConfig, *args: Any, **kwargs: Any) -> None:
        flat = sorted(k for k in kwargs if k in _LEGACY_STAGES and k != "gate")  # `gate` is a field of both forms
        if not flat:
            init(self, *args, **kwargs)
            return
        flat += ["gate"] if isinstance(kwargs.get("gate"), str) else []
        stages = sorted(k for k in kwargs if k not in _LEGACY_FIELDS or (k == "gate" and k not in flat))
        if args or stages:
            raise ConfigError(
                f"MemoryConfig mixes release 0.1's flat settings {flat} with this release's "
                f"{stages or 'positional arguments'}: write every setting in its stage, e.g. "
                f"{_LEGACY_STAGES[flat[0]]}."
            )
        warnings.warn(
            f"MemoryConfig({', '.join(f'{k}=...' for k in flat)}) is release 0.1's flat form, read as 0.1 read it "
            f"(MemoryConfig.from_legacy); write {'; '.join(_LEGACY_STAGES[k] for k in flat)} instead (CHANGELOG.md).",
            DeprecationWarning,
            stacklevel=2,
        )
        migrated = MemoryConfig.from_legacy(kwargs)
        init(self, **{f.name: getattr(migrated, f.name) for f in dataclasses.fields(MemoryConfig)})

    return __init__


MemoryConfig.__init__ = _accept_flat_settings(MemoryConfig.__init__)  # type: ignore[method-assign]


def migrate_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """A release-0.1 flat configuration as this release's nested one.

    Release 0.1 wrote every field whether its stage used it or not, so the migration keeps a field
    only where its stage reads it: no compressor when nothing read KV, no gate layers or sharpness
    unless the attention gate, no quote settings when rewriting, no recall unless a gate scanned in
    document order. Runtime and benchmark knobs
    (`compress_batch_size`, `fixed_update_tokens`) are dropped; `{memory}` in templates becomes `{notes}`.
    """
    unknown = sorted(set(flat) - _LEGACY_FIELDS)
    if unknown:
        raise ConfigError(f"Unknown release-0.1 configuration fields {unknown}.")
    get = flat.get
    gate_kind = get("gate", "lexical")
    reads = get("read", "raw")
    needs_kv = GATE_KINDS.get(gate_kind, False) or reads == "compressed"
    compression = None
    if needs_kv:
        method = get("compressor", "select")
        compression = {
            "method": method,
            "ratio": None if method == "none" else get("ratio", DEFAULT_RATIO),
            "score": get("score", DEFAULT_SCORE) if method == "select" else None,
        }
    gate = None
    if gate_kind is not None:
        gate = {"kind": gate_kind, "top_k": get("gate_top_k", 1), "threshold": get("gate_threshold")}
        if gate_kind == "attention":
            gate.update(layers=get("gate_layers"), sharpness=get("gate_sharpness", DEFAULT_SHARPNESS))
    update = get("memory_update", "append")
    notes: dict[str, Any] = {"update": update, "max_tokens": get("memory_tokens", 1024)}
    if update == "append":
        notes.update(
            note_tokens=get("note_tokens", DEFAULT_NOTE_TOKENS),
            min_grounding=get("min_grounding", DEFAULT_MIN_GROUNDING),
        )
    prompts = {
        "section_header": get("section_header", DEFAULT_SECTION_HEADER),
        "update_template": _renamed(get("update_template")),
        "answer_template": _renamed(get("answer_template", DEFAULT_ANSWER_TEMPLATE)),
        "gate_template": _renamed(get("gate_template", DEFAULT_GATE_TEMPLATE)),
        "empty_notes": get("empty_memory", DEFAULT_EMPTY_NOTES),
    }
    return {
        "chunking": {"size": get("chunk_size", 512)},
        "compression": compression,
        "gate": gate,
        "reading": {
            "mode": reads,
            "order": get("read_order", "document"),
            "recall": bool(get("recall", False)) and gate is not None and get("read_order", "document") == "document",
            "max_steps": get("max_steps"),
        },
        "notes": notes,
        "prompts": prompts,
        "direct_max_tokens": get("direct_max_tokens"),
        "query_tokens": get("query_tokens", 256),
    }


def _renamed(template: str | None) -> str | None:
    return None if template is None else template.replace("{memory}", "{notes}")


def _stage(name: str, kind: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must be a JSON object of {kind.__name__} settings, got {data!r}.")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"Unknown {name} settings {unknown}; the settings are {sorted(known)}.")
    return kind(**data)


def _set(instance: Any, name: str, value: Any) -> None:
    """Resolve a default in a frozen dataclass's `__post_init__`."""
    object.__setattr__(instance, name, value)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


def register_gate_kind(kind: str, reads_keys: bool) -> None:
    """Let `GateConfig(kind)` name a gate; `reads_keys`: the gate scores blocks by their compressed keys, so a bank
    read with it must hold them. Gates call this through `compressmem.gate.register`."""
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ConfigError(f"A gate kind must be a name (letters, digits, underscores), got {kind!r}.")
    if GATE_KINDS.get(kind, reads_keys) != reads_keys:
        raise ConfigError(f"Gate kind {kind!r} is already registered with reads_keys={GATE_KINDS[kind]}.")
    GATE_KINDS[kind] = bool(reads_keys)


def _choice(name: str, value: Any, allowed: tuple) -> None:
    """`value` must be one of `allowed`, and of its type: 4.0 is not the integer 4 (nor True 1) in a setting
    that is counted in bits."""
    if value not in allowed or not any(type(value) is type(option) and value == option for option in allowed):
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}.")


def _template(name: str, value: Any, keys: tuple[str, ...], allowed: tuple[str, ...] = ("question", "notes")) -> None:
    """A template must hold `keys`, no placeholder outside `allowed`, and be well-formed for `str.format`."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {type(value).__name__}.")
    try:
        parsed = [
            (field, spec, conversion)
            for _, field, spec, conversion in string.Formatter().parse(value)
            if field is not None
        ]
    except ValueError as error:
        raise ConfigError(f"{name} is not a valid template ({error}); write a literal brace as {{{{ or }}}}.") from None
    fields = {field for field, _, _ in parsed}
    dressed = [field for field, spec, conversion in parsed if spec or conversion]
    if dressed:  # `{notes!r}` or `{question:>{notes}}` would put reprs or computed text in the prompt
        raise ConfigError(
            f"{name} may hold only plain placeholders, without a conversion or format spec; got "
            f"{['{' + f + '...}' for f in dressed]}. Write {' or '.join('{' + k + '}' for k in allowed)}."
        )
    missing = [k for k in keys if k not in fields]
    if missing:
        raise ConfigError(f"{name} must contain the placeholders {['{' + k + '}' for k in missing]}.")
    extra = sorted(fields - set(allowed))
    if extra:
        raise ConfigError(
            f"{name} has unknown placeholders {['{' + k + '}' for k in extra]}; the placeholders are "
            f"{' and '.join('{' + k + '}' for k in allowed)}."
        )
