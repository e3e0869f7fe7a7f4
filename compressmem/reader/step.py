"""One read, defined once: what the model sees when it reads a block, for inference and for training.

`step_input` says what a read of block `b` with a given update prompt is: the raw chunk's tokens
followed by the prompt (`raw` reading), or the block's KV as a prefix followed by the prompt at the
positions after the chunk (`compressed`; a LycheeMemory block is read as their reader reads it, see
`step_input`). `layout` packs a batch of reads, left-padded, the same way
for `generate_steps` (decoding the notes) and for `step_logprobs` (the GRPO loss scoring the tokens
a rollout sampled), so the loss scores exactly what was sampled.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from transformers import Cache, DynamicCache, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..bank import MemoryBank
from ..compressors import CompressedChunks
from ..compressors.lychee import prompt_position, reads_their_way
from ..config import CompressionConfig, ConfigError
from ..hf.cache import PrefixCache, cached_kv
from ..hf.generation import generate_output
from ..hf.placement import layer_devices
from ..quantize import CHANNELS, TOKENS, Quantized, dense, fake_quantize, stored_quantization
from .prompts import pad_token_id


@dataclass(frozen=True)
class StepInput:
    """One row of a read: an optional KV prefix `[layers, kv_heads, m, d]`, the tokens read after it, and
    the RoPE position of the first of those tokens."""

    keys: torch.Tensor | None
    values: torch.Tensor | None
    input_ids: torch.Tensor
    first_position: int

    def __post_init__(self) -> None:
        if (self.keys is None) != (self.values is None):
            raise ValueError("A read's KV prefix needs both its keys and its values, or neither.")


PrefixedKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""The KV a compressed read sees: prefix keys, prefix values, block keys, block values."""


def step_input(
    bank: MemoryBank,
    block: int,
    prompt_ids: torch.Tensor,
    mode: str,
    recomputed: CompressedChunks | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    reuse: Hashable = None,
) -> StepInput:
    """What reading `block` of `bank` with the update prompt `prompt_ids` feeds the model.

    `raw`: the bank's prefix, the chunk's tokens, the prompt; with `reuse` (the reader's owner key), the KV
    an earlier raw read of the block by the same owner computed (`bank.kept`), when kept, instead of the
    tokens. `compressed`: the prefix's and the block's KV, then the prompt at the position after the chunk,
    whatever the block's size; a quantized block is dequantised here, on `device`, one block at a time.
    `recomputed` (the block compressed again, e.g. with gradients by a trainer) replaces both KV, read back
    as the bank's quantization would store it. KV lands on `device` in `dtype`.

    A compressed read of a bank of LycheeMemory blocks (`compressors.lychee.reads_their_way`) is their reader's:
    the block's entries alone (keys unrotated, as their cache keeps them), then the bank's section prefix and the
    prompt as tokens from position `prompt_position(chunk size, ratio)`, the memory entries of a full chunk.
    """
    if mode == "raw":
        found = bank.kept.get(block, reuse) if reuse is not None else None
        if found is None:
            return StepInput(None, None, torch.cat([bank.prefix_ids, bank.token_ids(block), prompt_ids]), 0)
        (prefix_keys, prefix_values), kept = found
        kv: PrefixedKV = (prefix_keys, prefix_values, dense(kept.keys.to(device)), dense(kept.values.to(device)))
    elif recomputed is None:
        kv = _bank_kv(bank, block, device)
    else:
        if bank.provenance.compression is None:
            raise ValueError(
                "This bank holds token ids only: a compressed read of recomputed blocks needs a bank built with "
                "a compression setting."
            )
        kv = _stored_as(recomputed, 0, bank.provenance.compression)
    provenance = bank.provenance
    if reads_their_way(provenance.compressor_digest) and provenance.compression is not None:
        ratio = provenance.compression.ratio or 1.0
        read = torch.cat([bank.prefix_ids, prompt_ids.to(bank.prefix_ids.device)])
        return _after_prefix(kv[2:], read, prompt_position(provenance.chunk_size, ratio), device, dtype)
    return _after_prefix(kv, prompt_ids, bank.prefix_ids.numel() + bank.infos[block].num_tokens, device, dtype)


def _bank_kv(bank: MemoryBank, block: int, device: torch.device | None) -> PrefixedKV:
    """The prefix's KV and block `block`'s, dequantised on `device`, refused for a bank that holds no values."""
    loaded = bank.blocks[block]
    prefix_keys, prefix_values = bank.prefix_keys, bank.prefix_values
    if loaded.keys is None or loaded.values is None or prefix_keys is None or prefix_values is None:
        raise ValueError(
            f"Block {block} of this bank has no keys and values to read (a bank of token ids or of keys only, for "
            "gating): read it with mode='raw', or rebuild the bank with values kept."
        )
    return prefix_keys, prefix_values, _on(loaded.keys, device), _on(loaded.values, device)


def _on(tensor: torch.Tensor | Quantized, device: torch.device | None) -> torch.Tensor:
    return dense(tensor.to(device))


def recomputed_input(
    recomputed: CompressedChunks,
    row: int,
    compression: CompressionConfig,
    prompt_ids: torch.Tensor,
    first_position: int,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> StepInput:
    """What reading row `row` of `recomputed` (chunks compressed with gradients by a trainer, not yet in a bank)
    with `prompt_ids` feeds the model: exactly what `step_input` builds from a bank whose blocks were made with
    `compression`. The block's KV is read back as that bank stores it (quantized blocks fake-quantized, with
    gradients passing straight through), after the prefix's KV; the prompt starts at RoPE position
    `first_position` (the prefix's and the chunk's tokens). KV lands on `device` in `dtype`."""
    return _after_prefix(_stored_as(recomputed, row, compression), prompt_ids, first_position, device, dtype)


def _stored_as(recomputed: CompressedChunks, row: int, compression: CompressionConfig) -> PrefixedKV:
    """Prefix keys and values, then row `row`'s block keys and values as a bank made with `compression` reads them
    back (the bank's prefix is stored as computed; its blocks quantized as `BankBuilder` quantizes them)."""
    if recomputed.values is None or recomputed.prefix_values is None:
        raise ValueError("The recomputed blocks hold keys only (keep_values=False): a read needs their values too.")
    keys, values = recomputed.keys[row], recomputed.values[row]
    quantization = stored_quantization(compression)
    if quantization is not None:
        bits, group = quantization
        keys, values = fake_quantize(keys, bits, group, TOKENS), fake_quantize(values, bits, group, CHANNELS)
    return recomputed.prefix_keys, recomputed.prefix_values, keys, values


def _after_prefix(
    kv: PrefixedKV | tuple[torch.Tensor, torch.Tensor],
    prompt_ids: torch.Tensor,
    first_position: int,
    device: torch.device | None,
    dtype: torch.dtype | None,
) -> StepInput:
    """A read of the KV prefix `kv` (prefix keys, prefix values, block keys, block values; or block keys and
    values alone) then `prompt_ids`, the first of them at RoPE position `first_position`."""
    moved = [t.to(device=device, dtype=dtype) for t in kv]
    keys = torch.cat(moved[0::2], dim=2)
    values = torch.cat(moved[1::2], dim=2)
    return StepInput(keys, values, prompt_ids, first_position)


@dataclass
class Layout:
    """A batch of reads, left-padded: `ids` `[rows, width]` (prompts, then any outputs), `positions` the
    same shape, `mask` `[rows, prefix_width + width]` over the KV prefix and the ids, and the prefixes
    `[rows, layers, kv_heads, prefix_width, d]` (None when every row reads raw tokens)."""

    ids: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    keys: torch.Tensor | None
    values: torch.Tensor | None
    prompt_width: int


def layout(inputs: list[StepInput], pad_id: int, outputs: list[torch.Tensor] | None = None) -> Layout:
    """Pack `inputs` into one batch: prefixes left-padded to a common width, prompts left-padded after
    them, and `outputs` (tokens generated after each prompt) appended, right-padded."""
    prefix_width = max((row.keys.shape[2] for row in inputs if row.keys is not None), default=0)
    prompt_width = max(row.input_ids.numel() for row in inputs)
    output_width = max((o.numel() for o in outputs), default=0) if outputs is not None else 0
    width = prompt_width + output_width
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(inputs), prefix_width + width, dtype=torch.long)
    positions = torch.zeros_like(ids)
    for row, item in enumerate(inputs):
        length = item.input_ids.numel()
        start = prompt_width - length
        ids[row, start:prompt_width] = item.input_ids
        output = outputs[row] if outputs is not None else item.input_ids.new_empty(0)
        made = output.numel()
        if made:
            ids[row, prompt_width : prompt_width + made] = output
        mask[row, prefix_width + start : prefix_width + prompt_width + made] = 1
        positions[row, start : prompt_width + made] = torch.arange(
            item.first_position, item.first_position + length + made
        )
        if item.keys is not None:
            mask[row, prefix_width - item.keys.shape[2] : prefix_width] = 1
    keys = values = None
    if prefix_width:
        keys, values = _padded_prefixes(inputs, prefix_width)
    return Layout(ids, positions, mask, keys, values, prompt_width)


def _padded_prefixes(inputs: list[StepInput], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' KV prefixes left-padded to `width` (differentiable: a trainer's recomputed blocks keep their graph)."""
    reference = next(row.keys for row in inputs if row.keys is not None)
    layers, kv_heads, _, dim = reference.shape
    keys = reference.new_zeros(len(inputs), layers, kv_heads, width, dim)
    values = torch.zeros_like(keys)
    for row, item in enumerate(inputs):
        if item.keys is not None and item.values is not None:  # both or neither (`StepInput`)
            keys[row, :, :, width - item.keys.shape[2] :] = item.keys
            values[row, :, :, width - item.values.shape[2] :] = item.values
    return keys, values


def _cache(batch: Layout, model: PreTrainedModel, growing: bool) -> DynamicCache | PrefixCache | None:
    """The batch's prefixes as a cache, each layer's on the device that layer runs on: one that grows as
    tokens are generated, or a read-only one for a forward pass that may be recomputed (training)."""
    if batch.keys is None or batch.values is None:
        return None
    devices = layer_devices(model)
    layers = [(batch.keys[:, i].to(devices[i]), batch.values[:, i].to(devices[i])) for i in range(batch.keys.shape[1])]
    return DynamicCache(layers) if growing else PrefixCache(layers)


class Written(NamedTuple):
    """What one row of `generate_steps` wrote: token ids up to and including end-of-sequence, their
    log-probabilities (when asked), and the KV of the span of its input that was asked to be kept."""

    ids: torch.Tensor
    logprobs: torch.Tensor | None
    kv: tuple[torch.Tensor, torch.Tensor] | None = None


RESERVED = {
    "max_new_tokens": "the notes' length is NotesConfig(note_tokens=...), or max_tokens when rewriting",
    "max_length": "the notes' length is NotesConfig(note_tokens=...), or max_tokens when rewriting",
    "pad_token_id": "the reader pads with the tokenizer's own",
    "eos_token_id": "the reader stops at the model's own",
    "return_dict_in_generate": "the reader needs the full output",
    "output_logits": "the reader records log-probabilities with logprobs=True",
}


def check_generation(settings: dict[str, Any] | None) -> None:
    """Refuse, by name, generation settings for the notes that the reader sets itself (passing them on would
    raise "got multiple values" from deep inside `generate`)."""
    clashes = sorted(set(settings or {}) & set(RESERVED))
    if clashes:
        reasons = "; ".join(f"{name}: {RESERVED[name]}" for name in clashes)
        raise ConfigError(f"notes generation settings may not set {', '.join(clashes)} ({reasons}). Drop them.")


def generate_steps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: list[StepInput],
    max_new_tokens: int,
    generation: dict[str, Any] | None = None,
    logprobs: bool = False,
    keep: list[tuple[int, int] | None] | None = None,
) -> list[Written]:
    """Decode each row's new notes: its new token ids, up to and including end-of-sequence, and (with
    `logprobs`) each token's log-probability under the model (before any sampling processor).

    Greedy unless `generation` gives generation settings (`do_sample`, `temperature`, `min_new_tokens`, ...).
    `keep` gives, per row, a span `(start, end)` of its `input_ids` whose KV the model computed to return,
    `[layers, kv_heads, end - start, d]` keys and values (None for a row, or for every row when a layer's
    cache holds a sliding window rather than every entry).
    """
    check_generation(generation)
    device = model.device
    pad_id = pad_token_id(tokenizer)
    batch = layout(inputs, pad_id)
    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    settings = {"do_sample": False, **(generation or {})}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos,
        return_dict_in_generate=True,
        output_logits=logprobs,
        **settings,
    )
    with torch.no_grad():
        out = generate_output(
            model,
            input_ids=batch.ids.to(device),
            attention_mask=batch.mask.to(device),
            position_ids=batch.positions.to(device),
            cache=_cache(batch, model, growing=True),
            generation_config=config,
        )
    new = out.sequences[:, batch.ids.shape[1] :].cpu()
    scored = None
    if logprobs:
        if out.logits is None:
            raise RuntimeError("generate returned no logits although output_logits was asked for.")
        logits = torch.stack(out.logits, dim=1).float().cpu()
        scored = logits.log_softmax(dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
    if keep and out.cache is None:
        raise RuntimeError("generate returned no cache, so no KV of the rows' inputs can be kept.")
    kept = _kept_kv(out.cache, batch, inputs, keep, device) if keep and out.cache is not None else [None] * len(inputs)
    rows = []
    for row, ids in enumerate(new):
        written = cut_at_eos(ids, eos)
        rows.append(Written(written, None if scored is None else scored[row, : written.numel()], kept[row]))
    return rows


def _kept_kv(
    cache: Cache,
    batch: Layout,
    inputs: list[StepInput],
    keep: list[tuple[int, int] | None],
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Per row, the cache's keys and values over the row's `keep` span of input ids, stacked over layers on
    `device` (None for every row when a layer keeps only a sliding window)."""
    if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
        return [None] * len(inputs)
    prefix_width = 0 if batch.keys is None else batch.keys.shape[3]
    spans: list[slice | None] = []
    for item, span in zip(inputs, keep):
        if span is None:
            spans.append(None)
            continue
        first = prefix_width + batch.prompt_width - item.input_ids.numel()
        spans.append(slice(first + span[0], first + span[1]))
    layers = [cached_kv(cache, layer) for layer in range(len(cache.layers))]
    return [None if cut is None else _span_kv(layers, row, cut, device) for row, cut in enumerate(spans)]


def _span_kv(
    layers: list[tuple[torch.Tensor, torch.Tensor]], row: int, cut: slice, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row `row`'s keys and values over the entries `cut`, stacked over `layers` on `device`."""
    keys = torch.stack([keys[row, :, cut].to(device) for keys, _ in layers])
    values = torch.stack([values[row, :, cut].to(device) for _, values in layers])
    return keys, values


def step_logprobs(
    model: PreTrainedModel, inputs: list[StepInput], outputs: list[torch.Tensor], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities `[rows, tokens]` of each row's `outputs` after its read, under the model as it is
    now (with autograd), and the mask of real tokens: the teacher-forced twin of `generate_steps`."""
    batch = layout(inputs, pad_id, outputs)
    device = model.device
    cache = _cache(batch, model, growing=False)
    logits = model(
        input_ids=batch.ids.to(device),
        attention_mask=batch.mask.to(device),
        position_ids=batch.positions.to(device),
        cache=cache,
        use_cache=cache is not None,
    ).logits
    start = batch.prompt_width - 1  # the logits at the prompt's last token predict the first output
    width = max(o.numel() for o in outputs)
    predicted = logits[:, start : start + width].float().log_softmax(dim=-1)
    targets = batch.ids[:, batch.prompt_width : batch.prompt_width + width].to(device)
    scores = predicted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for row, output in enumerate(outputs):
        mask[row, : output.numel()] = True
    return scores, mask


def cut_at_eos(ids: torch.Tensor, eos: int | list[int] | None) -> torch.Tensor:
    """Generated ids up to and including the first end-of-sequence token (the padding after it dropped)."""
    if eos is None:
        return ids
    stops = torch.isin(ids, torch.tensor(eos if isinstance(eos, list) else [eos])).nonzero()
    return ids[: stops[0, 0] + 1] if stops.numel() else ids
