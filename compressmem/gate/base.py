"""What a gate is: one small protocol, and a registry so that a new gate is one file.

A gate builds (or loads) its index of a bank once, kept with the bank, then scores every block of the bank
against gate prompts (question + notes) at each step of the reader. A gate may also say which of a question's
key terms the bank lacks, which lets the reader answer "not found" without reading; a gate that cannot tell
returns None.

A new gate is a class with these methods and a `from_config` constructor, decorated with `@register("kind")`:
`GateConfig("kind")` then names it, and the model, the reader and checkpoints use it with no other change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..bank import MemoryBank
from ..config import ConfigError, GateConfig, register_gate_kind


@runtime_checkable
class Gate(Protocol):
    """Scores a bank's blocks for relevance to gate prompts."""

    def index(self, bank: MemoryBank, model: PreTrainedModel) -> Any:
        """What the gate needs of `bank` to score it: loaded from the bank when kept with it, else built now and
        kept with it (so no later question, in this process or another, builds it again)."""
        ...

    def score(self, model: PreTrainedModel, prompts: list[str], index: Any) -> torch.Tensor:
        """`[rows, blocks]` scores, one row per gate prompt; higher is more relevant."""
        ...

    def missing(self, index: Any, terms: set[str]) -> list[str] | None:
        """The key `terms` of a question that no block of the bank holds, or None when this gate cannot tell."""
        ...


class Buildable(Protocol):
    """A gate class the registry can build."""

    @classmethod
    def from_config(
        cls, config: GateConfig, tokenizer: PreTrainedTokenizerBase, layers: tuple[int, ...], head: Any
    ) -> Gate:
        """The gate for `config`, with the tokenizer, the layers whose keys it may read (the model's choice for
        this base) and the trained head a checkpoint brought (or None)."""
        ...


GateFactory = Callable[[GateConfig, PreTrainedTokenizerBase, tuple[int, ...], Any], Gate]
GATES: dict[str, GateFactory] = {}
G = TypeVar("G", bound=Buildable)


def register(kind: str, *, reads_keys: bool) -> Callable[[type[G]], type[G]]:
    """Class decorator: make `GateConfig(kind)` build this gate through its `from_config`.

    `reads_keys`: the gate scores blocks by their compressed keys, so a bank it reads must hold them at the
    gate layers (the bank builder keeps them; the lexical gate, which reads text, needs none)."""

    def add(cls: type[G]) -> type[G]:
        register_gate_kind(kind, reads_keys)
        GATES[kind] = cls.from_config
        return cls

    return add


def finite_scores(scores: torch.Tensor, gate: str) -> torch.Tensor:
    """`scores` if every one is finite; else a `FloatingPointError` that says how many blocks and where to look.
    A NaN score would pass a block by chance (NaN sorts anywhere), so it is never a pass."""
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        raise FloatingPointError(
            f"{gate} scored {int(bad.sum())} of {bad.numel()} blocks NaN or infinite: the model's weights, "
            "the bank's keys or the gate's settings hold values out of range. Check them (MemoryBank.verify(), "
            "torch.isfinite over the weights), or read without a gate (gate=None)."
        )
    return scores


def build_gate(
    config: GateConfig | None, tokenizer: PreTrainedTokenizerBase, layers: tuple[int, ...], head: Any = None
) -> Gate | None:
    """The gate `config` names (None: no gate, every block is read), reading keys at `layers`."""
    if config is None:
        return None
    if config.kind not in GATES:  # registered in GateConfig but its module's class was never decorated
        raise ConfigError(f"No gate is registered for kind {config.kind!r}; known kinds: {sorted(GATES)}.")
    return GATES[config.kind](config, tokenizer, layers, head)
