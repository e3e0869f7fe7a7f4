"""The learned compressor (the paper's): memory tokens read a chunk through a LoRA adapter; their KV is the block.

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

import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from ..errors import CheckpointMismatchError
from ..hf.adapters import (
    WEIGHTS_FILE,
    adapter_active,
    adapter_weights,
    attach_adapter,
    default_lora_config,
    load_adapter,
    save_adapter,
)
from ..hf.cache import RecordingCache
from ..hf.compat import stop_forward, stoppable_forward
from ..hf.placement import input_embedding_weight, to_one_device
from ..hf.probe import probe
from .base import CompressedChunks, Compressor

if TYPE_CHECKING:
    from peft import LoraConfig

ADAPTER = "compressmem_compressor"
MEMORY_TENSOR = "memory_embeddings"


class LearnedCompressor(Compressor):
    """Appends learned memory tokens to every chunk and keeps only their KV, one per `ratio` tokens."""

    name = "learned"

    def __init__(self, ratio: float, memory_embeddings: torch.nn.Parameter, lora_config: LoraConfig) -> None:
        super().__init__(ratio)
        self.memory_embeddings = memory_embeddings  # [slots, hidden]: slot j is memory token j
        self.lora_config = lora_config  # the adapter's `peft.LoraConfig`

    @classmethod
    def initialise(
        cls, model: PreTrainedModel, ratio: float, chunk_size: int, rank: int = 8, seed: int = 0
    ) -> LearnedCompressor:
        """A fresh compressor for `model`: a LoRA adapter whose B is zero (so it starts as the base model)
        and memory embeddings drawn around the mean token embedding; the same `seed` gives the same one."""
        slots = math.ceil(chunk_size / ratio)
        embeddings = input_embedding_weight(model).detach()
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(slots, embeddings.shape[1], generator=generator) * embeddings.float().std().item()
        memory = torch.nn.Parameter((embeddings.float().mean(dim=0).cpu() + noise).to(embeddings.device))
        config = default_lora_config(rank)
        attach_adapter(model, config, ADAPTER, seed=seed)
        return cls(ratio, memory, config)

    def save(self, model: PreTrainedModel, directory: str | Path) -> None:
        """Write the adapter (PEFT layout: `adapter_config.json`, `adapter_model.safetensors`) plus the
        memory embeddings, in the same safetensors file; never the base model's weights."""
        save_adapter(
            model,
            self.lora_config,
            ADAPTER,
            directory,
            extra={MEMORY_TENSOR: self.memory_embeddings.float()},
            metadata={"ratio": str(self.ratio)},
        )

    @classmethod
    def load(cls, model: PreTrainedModel, directory: str | Path, ratio: float) -> LearnedCompressor:
        """Attach the saved adapter to `model` and read the memory embeddings; `ratio` must be the saved one."""
        from safetensors import safe_open

        directory = Path(directory)
        try:
            with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as handle:
                saved_ratio = float((handle.metadata() or {}).get("ratio", "nan"))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise CheckpointMismatchError(
                f"{directory / WEIGHTS_FILE} is not a readable safetensors file ({error}); "
                "the compressor is damaged: save or download it again."
            ) from None
        if saved_ratio != ratio:
            raise ValueError(
                f"The compressor in {directory} was trained at ratio {saved_ratio}, but the configuration "
                f"asks for ratio {ratio}; use the checkpoint's ratio."
            )
        config, extras = load_adapter(model, ADAPTER, directory, extra=(MEMORY_TENSOR,))
        memory = extras[MEMORY_TENSOR].to(input_embedding_weight(model).device)
        return cls(ratio, torch.nn.Parameter(memory, requires_grad=False), config)

    def weights(self, model: PreTrainedModel) -> list[torch.nn.Parameter]:
        """Everything the compressor learns: its memory embeddings and its LoRA weights in `model`."""
        return [self.memory_embeddings, *adapter_weights(model, ADAPTER).values()]

    def digest(self, model: PreTrainedModel) -> str:
        """SHA-256 of the ratio and every weight the compressor learns, rounded to bfloat16 (as the base model's
        fingerprint is) so that the same compressor loaded in another dtype keeps its identity."""
        digest = hashlib.sha256(str(self.ratio).encode())
        for weight in self.weights(model):
            digest.update(weight.detach().to("cpu", torch.bfloat16).float().numpy().tobytes())
        return digest.hexdigest()

    def forward_blocks(
        self,
        model: PreTrainedModel,
        prefix_ids: torch.Tensor,
        chunk_ids: torch.Tensor,
        layers: tuple[int, ...],
        keep_values: bool,
    ) -> CompressedChunks:
        """`compress`, with autograd left to the caller (training recomputes blocks with gradients)."""
        batch, num_tokens = chunk_ids.shape
        kept = self.kept_entries(num_tokens)
        if kept > self.memory_embeddings.shape[0]:
            raise ValueError(
                f"A chunk of {num_tokens} tokens at ratio {self.ratio} needs {kept} memory tokens, but "
                f"this compressor has {self.memory_embeddings.shape[0]}: it was trained for shorter "
                "chunks; use its chunk_size."
            )
        prefix_len = prefix_ids.numel()
        device = model.device
        ids = torch.cat([prefix_ids.expand(batch, -1), chunk_ids], dim=1).to(device)
        text_embeds = model.get_input_embeddings()(ids)
        memory = self.memory_embeddings[:kept].to(device=device, dtype=text_embeds.dtype)
        embeds = torch.cat([text_embeds, memory.expand(batch, -1, -1)], dim=1)
        slots = memory_positions(num_tokens, kept, self.ratio) + prefix_len
        positions = torch.cat([torch.arange(prefix_len + num_tokens), slots]).to(device).expand(batch, -1)
        cache = RecordingCache(model.config.get_text_config().num_hidden_layers)
        stop_after = None if keep_values else max(layers)

        def record(layer_idx: int, query: torch.Tensor, key: torch.Tensor) -> None:
            if layer_idx == stop_after:
                stop_forward()

        with adapter_active(model, ADAPTER), probe(model, record), stoppable_forward():
            model(inputs_embeds=embeds, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        start = prefix_len + num_tokens
        kv = [tuple(to_one_device(list(cache.recorded(i)), device)) for i in layers]
        keys = torch.stack([k[:, :, start:] for k, _ in kv], dim=1)
        values = torch.stack([v[:, :, start:] for _, v in kv], dim=1) if keep_values else None
        entry_positions = slots.to(device=device, dtype=torch.int32).expand(*keys.shape[:3], -1)
        prefix_keys = torch.stack([k[0, :, :prefix_len] for k, _ in kv])
        prefix_values = torch.stack([v[0, :, :prefix_len] for _, v in kv]) if keep_values else None
        return CompressedChunks(keys, values, entry_positions, prefix_keys, prefix_values)


def memory_positions(num_tokens: int, kept: int, ratio: float) -> torch.Tensor:
    """Chunk-relative RoPE position of each memory token: the last token of its group of `ratio`."""
    ends = torch.ceil((torch.arange(kept) + 1) * ratio).long() - 1
    return ends.clamp(max=num_tokens - 1)
