"""The trained gate: a logistic mix of how strongly each head attends to each block.

For every block, the fused `gate_scores` op gives, per gate layer and query head, the log-sum-exp
of the gate prompt's queries against the block's compressed keys, pooled over the prompt's tokens
by mean and by max. `GateHead` centres those scores over the bank (a block is relevant relative to
the others, whatever the prompt's overall scale), optionally adds the lexical gate's BM25 score as
one more feature, and maps them through a learned weight per (pool, layer, head), a bias and a
sigmoid to one probability per block. It is a few hundred parameters, trained as a classifier by
`compressmem.training.gate` and saved as `gate_head.safetensors` in a compressmem checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..bank import MemoryBank
from ..config import SHARPNESS_RANGE, GateConfig
from ..errors import GateHeadError
from .attention import AttentionGate, GateIndex
from .base import register
from .lexical import LexicalGate, LexicalIndex

HEAD_FILE = "gate_head.safetensors"
HEAD_FORMAT = "compressmem.GateHead"
POOLS = ("mean", "max")


class GateHead(torch.nn.Module):
    """p(block holds evidence) = sigmoid(bias + weight . centred pooled scores [+ w_lex . BM25])."""

    def __init__(self, layers: tuple[int, ...], heads: int, sharpness: float = 8.0, lexical: bool = False) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.heads = heads
        self.sharpness = float(sharpness)
        self.lexical = lexical
        self.weight = torch.nn.Parameter(torch.zeros(self.num_features))
        self.bias = torch.nn.Parameter(torch.zeros(()))

    @property
    def num_features(self) -> int:
        return len(POOLS) * len(self.layers) * self.heads + int(self.lexical)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits `[..., blocks]` from features `[..., blocks, num_features]`."""
        return features @ self.weight + self.bias

    def save(self, path: str | Path) -> None:
        metadata = {
            "format": HEAD_FORMAT,
            "layers": json.dumps(list(self.layers)),
            "heads": str(self.heads),
            "sharpness": str(self.sharpness),
            "lexical": json.dumps(self.lexical),
            "pools": json.dumps(list(POOLS)),
        }
        tensors = {
            "weight": self.weight.detach().float().contiguous().cpu(),
            "bias": self.bias.detach().float().reshape(1).contiguous().cpu(),
        }
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> GateHead:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise GateHeadError(
                f"{path} is not a readable safetensors file ({error}); the gate head is damaged: "
                "train or download it again."
            ) from None
        if metadata.get("format") != HEAD_FORMAT or metadata.get("pools") != json.dumps(list(POOLS)):
            raise GateHeadError(
                f"{path} is not a compressmem gate head (format {metadata.get('format')!r}, pools "
                f"{metadata.get('pools')!r}; expected {HEAD_FORMAT!r} with pools {list(POOLS)})."
            )
        try:
            head = cls(
                tuple(json.loads(metadata["layers"])),
                int(metadata["heads"]),
                float(metadata["sharpness"]),
                json.loads(metadata["lexical"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise GateHeadError(
                f"{path}: the gate head's settings (layers, heads, sharpness, lexical) are missing or "
                f"malformed ({type(error).__name__}: {error}); train or download it again."
            ) from None
        layers = head.layers
        if (
            not layers
            or len(set(layers)) != len(layers)
            or any(not isinstance(i, int) or i < 0 for i in layers)
            or head.heads < 1
            or not SHARPNESS_RANGE[0] <= head.sharpness <= SHARPNESS_RANGE[1]
            or not isinstance(head.lexical, bool)
        ):
            raise GateHeadError(
                f"{path}: the gate head's settings are out of range (layers {list(layers)}: distinct "
                f"indices >= 0; heads {head.heads}: >= 1; sharpness {head.sharpness}: from "
                f"{SHARPNESS_RANGE[0]:g} to {SHARPNESS_RANGE[1]:g}; lexical {head.lexical!r}: true or false); "
                "train or download it again."
            )
        for name, shape in (("weight", (head.num_features,)), ("bias", (1,))):
            if name not in tensors or tensors[name].shape != shape:
                found = tuple(tensors[name].shape) if name in tensors else "missing"
                raise GateHeadError(f"{path}: {name} has shape {found}, its metadata needs {shape}.")
            if not bool(torch.isfinite(tensors[name]).all()):
                raise GateHeadError(
                    f"{path}: {name} holds NaN or infinite values; the gate head is corrupt: train or "
                    "download it again."
                )
        with torch.no_grad():
            head.weight.copy_(tensors["weight"])
            head.bias.copy_(tensors["bias"][0])
        return head

    def check_model(self, model: PreTrainedModel) -> None:
        """Raise `GateHeadError` if this head was trained for a model of another depth or head count."""
        config = model.config.get_text_config()
        if config.num_attention_heads != self.heads or max(self.layers) >= config.num_hidden_layers:
            raise GateHeadError(
                f"This gate head reads {self.heads} heads at layers {list(self.layers)}, but the model has "
                f"{config.num_attention_heads} heads and {config.num_hidden_layers} layers: it was trained for "
                "another base model. Load the checkpoint made for this model, or train one (compressmem train gate)."
            )


@dataclass
class HeadIndex:
    """What the head needs of a bank: its packed gate keys and, with a lexical feature, its BM25 index."""

    keys: GateIndex
    words: LexicalIndex | None


@register("head", reads_keys=True)
class HeadGate:
    """The gate a reasoner uses with a trained `GateHead`: probabilities per block, in [0, 1]."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, head: GateHead) -> None:
        low, high = SHARPNESS_RANGE
        if not low <= head.sharpness <= high:
            raise GateHeadError(f"The gate head's sharpness {head.sharpness:g} is outside {low:g}-{high:g}.")
        for name, weights in head.named_parameters():
            if not bool(torch.isfinite(weights).all()):
                raise GateHeadError(
                    f"The gate head's {name} holds NaN or infinite values: it would pass blocks on NaN scores. "
                    "Train it again, or load a trained one with GateHead.load."
                )
        self.head = head.eval()
        self.attention = AttentionGate(tokenizer, head.layers, head.sharpness)
        self.lexical = LexicalGate(tokenizer) if head.lexical else None

    @classmethod
    def from_config(
        cls, config: GateConfig, tokenizer: PreTrainedTokenizerBase, layers: tuple[int, ...], head: object
    ) -> HeadGate:
        """The head gate over `head`, the trained weights a checkpoint brought (its own layers, not `layers`)."""
        if not isinstance(head, GateHead):
            raise GateHeadError(
                "gate kind 'head' needs trained weights: load a checkpoint that has them with "
                "from_pretrained(base, checkpoint=CHECKPOINT), pass gate_head=, or train one with "
                "`compressmem train gate`."
            )
        return cls(tokenizer, head)

    def missing(self, index: HeadIndex, terms: set[str]) -> None:
        """None: the trained head weighs its lexical feature with the keys, so a word the bank lacks is no
        reason to skip reading."""
        return None

    def index(self, bank: MemoryBank, model: PreTrainedModel) -> HeadIndex:
        words = self.lexical.index(bank, model) if self.lexical is not None else None
        return HeadIndex(self.attention.index(bank, model), words)

    def features(
        self, model: PreTrainedModel, texts: list[str], index: HeadIndex, pooled: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`[rows, blocks, num_features]`: per-prompt centred pooled scores, then the BM25 feature.

        `pooled` is `attention.pooled_scores(..., POOLS)` when the caller has computed it already.
        """
        if pooled is None:
            pooled = self.attention.pooled_scores(model, texts, index.keys, POOLS)  # [rows, blocks, P, L, H]
        centred = pooled - pooled.mean(dim=1, keepdim=True)
        features = centred.flatten(2)
        if self.lexical is None:
            return features
        if index.words is None:
            raise ValueError(
                "This index holds no BM25 index for the head's lexical feature: build it with this gate's index()."
            )
        bm25 = self.lexical.score(model, texts, index.words)  # each row sums to 1
        relative = bm25 * bm25.shape[1] - 1  # 0 for an average block, whatever the bank's size
        return torch.cat([features, relative.unsqueeze(-1).to(features)], dim=-1)

    @torch.no_grad()
    def score(self, model: PreTrainedModel, texts: list[str], index: HeadIndex) -> torch.Tensor:
        """`[rows, blocks]` probabilities that each block holds evidence for each gate prompt (on the CPU), the head
        run wherever it lies (the wrapper's `to()` moves it with the model)."""
        features = self.features(model, texts, index).to(self.head.weight)
        return torch.sigmoid(self.head(features)).cpu()
