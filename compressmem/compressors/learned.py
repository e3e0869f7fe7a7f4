"""The learned compressor (DESIGN §3.2): memory tokens read a chunk through a LoRA adapter; their KV is the block.

`ceil(n / ratio)` learned memory-token embeddings are appended to each `[prefix + chunk]`, and the
batch runs through the base model with the compressor's LoRA adapter switched on (and off again
after, so the base model's own `generate()` never sees it). Only the memory tokens' KV is kept.
Memory token `j` takes the RoPE position of the last chunk token of its group of `ratio`, so a
block spans the chunk's own positions and the reasoner's prompt follows it at `p + n`, exactly as
after a raw or `select`-compressed chunk. Trained by `compressmem.training` (pre-training, GRPO);
with `requires_grad` on, `forward_blocks` keeps the graph so a loss reaches the adapter and the
embeddings through the reasoner's attention over the block.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import DynamicCache, PreTrainedModel

from ..probe import probe
from .base import CompressedChunks, Compressor, _LastLayerSeen

ADAPTER = "compressmem_compressor"
WEIGHTS_FILE = "adapter_model.safetensors"
MEMORY_TENSOR = "memory_embeddings"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class LearnedCompressor(Compressor):
    """Appends learned memory tokens to every chunk and keeps only their KV, one per `ratio` tokens."""

    name = "learned"

    def __init__(self, ratio: float, memory_embeddings: torch.nn.Parameter, lora_config) -> None:
        super().__init__(ratio)
        self.memory_embeddings = memory_embeddings  # [slots, hidden]: slot j is memory token j
        self.lora_config = lora_config  # the adapter's `peft.LoraConfig`

    @classmethod
    def initialise(cls, model: PreTrainedModel, ratio: float, chunk_size: int, rank: int = 8,
                   seed: int = 0) -> "LearnedCompressor":
        """A fresh compressor for `model`: a LoRA adapter whose B is zero (so it starts as the base model)
        and memory embeddings drawn around the mean token embedding; the same `seed` gives the same one."""
        from peft import LoraConfig

        slots = math.ceil(chunk_size / ratio)
        embeddings = model.get_input_embeddings().weight.detach()
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(slots, embeddings.shape[1], generator=generator) * embeddings.float().std().item()
        memory = torch.nn.Parameter(embeddings.float().mean(dim=0).cpu() + noise)
        lora_config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LORA_TARGETS), lora_dropout=0.0)
        with torch.random.fork_rng(devices=[]):  # the adapter's random init follows `seed`, not global state
            torch.manual_seed(seed)
            attach_adapter(model, lora_config)
        return cls(ratio, memory, lora_config)

    def save(self, model: PreTrainedModel, directory: str | Path) -> None:
        """Write the adapter (PEFT layout: `adapter_config.json`, `adapter_model.safetensors`) plus the
        memory embeddings, in the same safetensors file; never the base model's weights."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.lora_config.save_pretrained(str(directory))
        tensors = {name: weight.detach().contiguous().cpu() for name, weight in adapter_weights(model).items()}
        tensors[MEMORY_TENSOR] = self.memory_embeddings.detach().float().contiguous().cpu()
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"ratio": str(self.ratio)})

    @classmethod
    def load(cls, model: PreTrainedModel, directory: str | Path, ratio: float) -> "LearnedCompressor":
        """Attach the saved adapter to `model` and read the memory embeddings; `ratio` must be the saved one."""
        from peft import LoraConfig
        from safetensors import safe_open

        directory = Path(directory)
        with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as handle:
            saved_ratio = float((handle.metadata() or {}).get("ratio", "nan"))
        if saved_ratio != ratio:
            raise ValueError(f"The compressor in {directory} was trained at ratio {saved_ratio}, but the configuration "
                             f"asks for ratio {ratio}; use the checkpoint's ratio.")
        tensors = load_file(str(directory / WEIGHTS_FILE))
        memory = torch.nn.Parameter(tensors.pop(MEMORY_TENSOR), requires_grad=False)
        lora_config = LoraConfig.from_pretrained(str(directory))
        attach_adapter(model, lora_config)
        expected = adapter_weights(model)
        if set(tensors) != set(expected):
            raise ValueError(f"The adapter in {directory} does not fit this model: {len(set(tensors) - set(expected))} "
                             f"saved weights have no place in it and {len(set(expected) - set(tensors))} are missing.")
        with torch.no_grad():
            for name, weight in expected.items():
                weight.copy_(tensors[name])
        return cls(ratio, memory, lora_config)

    @torch.no_grad()
    def compress(self, model: PreTrainedModel, prefix_ids: torch.Tensor, chunk_ids: torch.Tensor,
                 layers: tuple[int, ...], keep_values: bool) -> CompressedChunks:
        return self.forward_blocks(model, prefix_ids, chunk_ids, layers, keep_values)

    def forward_blocks(self, model: PreTrainedModel, prefix_ids: torch.Tensor, chunk_ids: torch.Tensor,
                       layers: tuple[int, ...], keep_values: bool) -> CompressedChunks:
        """`compress`, with autograd left to the caller (training recomputes blocks with gradients)."""
        batch, num_tokens = chunk_ids.shape
        kept = self.kept_entries(num_tokens)
        if kept > self.memory_embeddings.shape[0]:
            raise ValueError(f"A chunk of {num_tokens} tokens at ratio {self.ratio} needs {kept} memory tokens, but "
                             f"this compressor has {self.memory_embeddings.shape[0]}: it was trained for shorter "
                             "chunks; use its chunk_size.")
        prefix_len = prefix_ids.numel()
        device = model.device
        ids = torch.cat([prefix_ids.expand(batch, -1), chunk_ids], dim=1).to(device)
        text_embeds = model.get_input_embeddings()(ids)
        memory = self.memory_embeddings[:kept].to(device=device, dtype=text_embeds.dtype)
        embeds = torch.cat([text_embeds, memory.expand(batch, -1, -1)], dim=1)
        slots = memory_positions(num_tokens, kept, self.ratio) + prefix_len
        positions = torch.cat([torch.arange(prefix_len + num_tokens), slots]).to(device).expand(batch, -1)
        cache = DynamicCache()
        stop_after = None if keep_values else max(layers)

        def record(layer_idx: int, query: torch.Tensor, key: torch.Tensor) -> None:
            if layer_idx == stop_after:
                raise _LastLayerSeen

        with adapter_active(model), probe(model, record), contextlib.suppress(_LastLayerSeen):
            model(inputs_embeds=embeds, position_ids=positions, past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
        start = prefix_len + num_tokens
        keys = torch.stack([cache.layers[i].keys[:, :, start:] for i in layers], dim=1)
        values = torch.stack([cache.layers[i].values[:, :, start:] for i in layers], dim=1) if keep_values else None
        entry_positions = slots.to(device=device, dtype=torch.int32).expand(*keys.shape[:3], -1)
        prefix_keys = torch.stack([cache.layers[i].keys[0, :, :prefix_len] for i in layers])
        prefix_values = torch.stack([cache.layers[i].values[0, :, :prefix_len] for i in layers]) if keep_values \
            else None
        return CompressedChunks(keys, values, entry_positions, prefix_keys, prefix_values)


def memory_positions(num_tokens: int, kept: int, ratio: float) -> torch.Tensor:
    """Chunk-relative RoPE position of each memory token: the last token of its group of `ratio`."""
    ends = torch.ceil((torch.arange(kept) + 1) * ratio).long() - 1
    return ends.clamp(max=num_tokens - 1)


def attach_adapter(model: PreTrainedModel, lora_config) -> None:
    """Inject the compressor's LoRA adapter into `model` (switched off: it is on only while compressing).

    PEFT's own injection, not transformers' adapter integration, so any transformers version that
    PEFT supports works.
    """
    from peft import inject_adapter_in_model

    if not adapter_weights(model):
        trainable = {name: weight.requires_grad for name, weight in model.named_parameters()}
        inject_adapter_in_model(lora_config, model, adapter_name=ADAPTER)
        for name, weight in model.named_parameters():  # PEFT freezes the base; leave it as the user had it
            weight.requires_grad_(trainable.get(name, weight.requires_grad))
    _switch(model, on=False)


def adapter_weights(model: PreTrainedModel) -> dict[str, torch.nn.Parameter]:
    """The compressor adapter's weights in `model`, by parameter name."""
    return {name: weight for name, weight in model.named_parameters() if f".{ADAPTER}." in name}


@contextlib.contextmanager
def adapter_active(model: PreTrainedModel) -> Iterator[None]:
    """Run the block with the compressor's adapter on, and switch it off again whatever happens.

    Switching an adapter off also freezes its weights in PEFT; their trainability is restored after,
    so a trainer's backward pass (which runs once the adapter is off again) still reaches them.
    """
    weights = list(adapter_weights(model).values())
    trainable = [w.requires_grad for w in weights]
    _switch(model, on=True)
    try:
        yield
    finally:
        _switch(model, on=False)
        for weight, flag in zip(weights, trainable):
            weight.requires_grad_(flag)


def _switch(model: PreTrainedModel, on: bool) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(on)
