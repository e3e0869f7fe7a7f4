"""The training-free attention gate: which memory blocks does the current (question + notes) attend to?"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..bank import BankMismatchError, MemoryBank
from ..config import DEFAULT_SHARPNESS, CompressionConfig, GateConfig
from ..hf.placement import to_one_device
from ..hf.probe import probe
from ..hf.rope import Rotary
from ..kernels import gate_scores
from ..quantize import TOKENS, Quantized, dense, quantize, stored_quantization
from .base import register

INDEX_VERSION = 1


def default_gate_layers(num_layers: int, layer_types: list[str] | None = None) -> tuple[int, ...]:
    """The layers from half to three quarters of the depth, where retrieval-like heads live.

    With `layer_types` (models that mix sliding-window and full attention, such as Gemma-3), only
    full-attention layers: a sliding layer never sees a block beyond its window, so its keys say
    nothing about relevance at a distance. The full layer nearest that range is taken when none
    lies in it.
    """
    first = num_layers // 2
    middle = tuple(range(first, max(first + 1, (3 * num_layers) // 4)))
    if not layer_types:
        return middle
    full = [i for i, kind in enumerate(layer_types) if kind == "full_attention"]
    if not full:
        raise ValueError(
            "This model has no full-attention layer (every layer has a sliding window), so the "
            "attention gate cannot score blocks by their keys; use the lexical gate."
        )
    inside = tuple(i for i in full if i in middle)
    centre = (first + middle[-1]) / 2
    return inside or (min(full, key=lambda i: (abs(i - centre), -i)),)  # a tie goes to the deeper layer


@dataclass
class GateIndex:
    """A bank's gate-layer keys, rotated back to position 0 and packed once on the model's device: float, or, for a
    bank of quantized blocks, quantized as the bank is (per channel, in groups along the keys), so that scoring
    reads a quarter or an eighth of the bytes."""

    keys: torch.Tensor | Quantized  # [gate layers, kv_heads, total entries, d]
    offsets: torch.Tensor  # [blocks + 1] int64, on the keys' device
    rotary: Rotary | None  # the model's RoPE, found once here rather than at every step

    @classmethod
    def build(cls, bank: MemoryBank, layers: tuple[int, ...], model: PreTrainedModel) -> GateIndex:
        """The index kept with `bank` for these layers (moved to the model's device once per process), or
        built now from the blocks and kept with the bank."""
        missing = sorted(set(layers) - set(bank.layers))
        if missing or not len(bank) or int(bank.infos.column("entries").min()) == 0:
            raise BankMismatchError(
                f"The gate reads layers {list(layers)} but the bank holds keys for {list(bank.layers)} only; "
                "rebuild the bank with this configuration's compress()."
            )
        rotary = Rotary.of(model)
        name = "keys-" + "-".join(map(str, layers))
        metadata = {"version": INDEX_VERSION, "blocks": len(bank), "layers": list(layers)}
        compression = bank.provenance.compression
        kept = bank.derived(name)
        if kept is not None and all(kept[1].get(key) == value for key, value in metadata.items()):
            return cls(_keys_from(kept[0], compression).to(model.device), kept[0]["offsets"].to(model.device), rotary)
        rows = [bank.layers.index(i) for i in layers]
        keys = []
        for number, block in enumerate(bank.blocks):
            if block.keys is None or block.positions is None:
                raise BankMismatchError(f"Block {number} of this bank holds no keys; rebuild the bank with compress().")
            block_keys = dense(block.keys[rows].to(model.device))  # a quantized block, dequantised on the device
            if rotary is not None:
                block_keys = rotary.unrotate_layers(block_keys, block.positions[rows].long(), layers, dim=0)
            keys.append(block_keys)
        sizes = torch.cat([torch.zeros(1, dtype=torch.int64), bank.infos.column("entries")])
        stacked = torch.cat(keys, dim=2)
        packed: torch.Tensor | Quantized = stacked
        quantization = stored_quantization(compression)
        if quantization is not None:
            bits, group = quantization
            packed = quantize(stacked, bits, group, TOKENS)
        index = cls(keys=packed, offsets=sizes.cumsum(0).to(model.device), rotary=rotary)
        bank.keep_derived(name, {**_keys_tensors(packed), "offsets": index.offsets}, metadata)
        return index


def _keys_tensors(keys: torch.Tensor | Quantized) -> dict[str, torch.Tensor]:
    if isinstance(keys, Quantized):
        return {"keys": keys.data, "key_scales": keys.scales, "key_zeros": keys.zeros}
    return {"keys": keys}


def _keys_from(tensors: dict[str, torch.Tensor], compression: CompressionConfig | None) -> torch.Tensor | Quantized:
    """The keys of a kept gate index, quantized as the bank's blocks are when it kept them quantized."""
    if "key_scales" not in tensors:
        return tensors["keys"]
    quantization = stored_quantization(compression)
    if quantization is None:
        raise BankMismatchError(
            "The bank's kept gate index is quantized, but the bank's settings quantize nothing: the index is "
            "damaged. Rebuild the bank."
        )
    bits, group = quantization
    return Quantized(tensors["keys"], tensors["key_scales"], tensors["key_zeros"], bits, group, TOKENS)


@register("attention", reads_keys=True)
class AttentionGate:
    """Scores blocks by how strongly the gate prompt's queries, at a few layers, match their keys.

    Queries and keys are compared by content (RoPE undone on both sides), through a sharpened
    log-sum-exp over each block's keys (`sharpness` 1 is attention's own, large values approach the
    single best match), averaged over the prompt's tokens. Without training there is no calibrated
    probability, so heads and layers are mixed uniformly after a softmax over blocks: each row's
    scores sum to 1.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, layers: tuple[int, ...], sharpness: float = DEFAULT_SHARPNESS
    ) -> None:
        self.tokenizer = tokenizer
        self.layers = layers
        self.sharpness = sharpness

    @classmethod
    def from_config(
        cls, config: GateConfig, tokenizer: PreTrainedTokenizerBase, layers: tuple[int, ...], head: object
    ) -> AttentionGate:
        return cls(tokenizer, layers, DEFAULT_SHARPNESS if config.sharpness is None else config.sharpness)

    def missing(self, index: GateIndex, terms: set[str]) -> None:
        """Keys say nothing about which words a bank lacks."""
        return None

    def index(self, bank: MemoryBank, model: PreTrainedModel) -> GateIndex:
        """The bank's packed gate keys on the model's device, made once per process and bank."""
        return bank.memo(("keys", self.layers, str(model.device)), lambda: GateIndex.build(bank, self.layers, model))

    @torch.no_grad()
    def score(self, model: PreTrainedModel, texts: list[str], index: GateIndex) -> torch.Tensor:
        """`[rows, blocks]` block scores for each gate prompt."""
        return self.mix(self.pooled_scores(model, texts, index, ("mean",))[:, :, 0])

    @staticmethod
    def mix(mean_pooled: torch.Tensor) -> torch.Tensor:
        """`[rows, blocks]` from mean-pooled scores `[rows, blocks, layers, heads]`: a softmax over blocks per
        layer and head, averaged uniformly (no training, so no better weighting is known)."""
        return mean_pooled.softmax(dim=1).mean(dim=(2, 3))

    @torch.no_grad()
    def pooled_scores(
        self, model: PreTrainedModel, texts: list[str], index: GateIndex, pools: tuple[str, ...]
    ) -> torch.Tensor:
        """`[rows, blocks, pools, layers, heads]`: each prompt's sharpened log-sum-exp on each block,
        pooled over its tokens by each of `pools` ("mean", "max"), in logit units."""
        prompts = [
            torch.tensor(
                self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
                or [self.tokenizer.eos_token_id]
            )
            for text in texts
        ]
        keys_dtype = torch.float32 if isinstance(index.keys, Quantized) else index.keys.dtype
        queries = self._queries(model, prompts, index.rotary).to(keys_dtype)
        scale = self.sharpness * queries.shape[-1] ** -0.5
        rows = []
        for row_queries, length in zip(queries, (p.numel() for p in prompts)):
            rows.append(
                torch.stack(
                    [
                        gate_scores(row_queries[:, :, :length], index.keys, index.offsets, scale=scale, pool=pool)
                        for pool in pools
                    ],
                    dim=1,
                )
                / self.sharpness
            )
        return torch.stack(rows)

    def _queries(self, model: PreTrainedModel, prompts: list[torch.Tensor], rotary: Rotary | None) -> torch.Tensor:
        """Queries at the gate layers rotated back to position 0, `[rows, layers, heads, q, d]`."""
        width = max(p.numel() for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : prompt.numel()] = prompt
            mask[row, : prompt.numel()] = 1
        positions = torch.arange(width).expand(len(prompts), -1).to(model.device)
        captured: dict[int, torch.Tensor] = {}
        wanted = set(self.layers)

        def record(layer_idx: int, query: torch.Tensor, key: torch.Tensor) -> None:
            if layer_idx in wanted:
                captured[layer_idx] = query

        with probe(model, record):
            model(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                position_ids=positions,
                use_cache=False,
                logits_to_keep=1,
            )
        queries = torch.stack(to_one_device([captured[i] for i in self.layers], model.device), dim=1)
        if rotary is None:
            return queries
        query_positions = positions.view(len(prompts), 1, 1, width).expand(*queries.shape[:-1])
        return rotary.unrotate_layers(queries, query_positions, self.layers, dim=1)
