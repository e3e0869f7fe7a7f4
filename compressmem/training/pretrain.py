"""Compressor pre-training: from a block alone, reconstruct its chunk and continue the text.

The reasoner is the frozen base model (adapter off). Each example is a chunk and the tokens that
follow it in the text: the chunk is compressed into a block by the learned compressor, with
gradients, and the base model, reading only that block (after the shared section prefix, at the
positions the reasoner uses), is scored by cross-entropy on the chunk's own tokens (reconstruction)
and then on the next ones (continuation). The block is read exactly as inference reads a block of
a bank this model builds, quantization included (`reader.recomputed_input`). Only the compressor's
LoRA adapter and memory embeddings learn. Checkpoints are compressmem checkpoints plus
`trainer_state.safetensors` (step and AdamW state, no pickle), so a run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..compressors import LearnedCompressor
from ..config import DEFAULT_RATIO, CompressionConfig, MemoryConfig
from ..hf.adapters import keep_quantized_differentiable
from ..model import CompressedMemoryModel
from ..reader import pad_token_id, recomputed_input, step_logprobs
from .state import TRAINER_STATE, peak_memory_mib, read_log, resume_trainer_state, save_trainer_state, write_log

LOG_FILE = "pretrain_log.jsonl"


@dataclass
class PretrainConfig:
    """Optimisation settings of `pretrain`."""

    steps: int = 200
    batch_size: int = 4
    learning_rate: float = 1e-3
    continuation_tokens: int = 64
    save_every: int = 50
    max_grad_norm: float = 1.0
    seed: int = 0


def reconstruction_loss(
    model: CompressedMemoryModel, chunk_ids: torch.Tensor, continuation_ids: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of the frozen base model rebuilding `chunk_ids` `[B, n]` and continuing with
    `continuation_ids` `[B, t]` from the chunks' blocks alone, the blocks recomputed with gradients and each
    read exactly as the reasoner reads a block of a bank this model builds (`reader.recomputed_input`, the
    compressed read of `step_input`, then `step_logprobs`): after the bank's prefix, at the positions after
    the chunk, and quantized as the bank would store it (fake-quantized, gradients passing straight through)."""
    builder = model.builder
    if not isinstance(model.compressor, LearnedCompressor) or builder.compression is None:
        raise TypeError(
            "reconstruction_loss trains a learned compressor; build the model with compression method 'learned'."
        )
    blocks = builder.forward(chunk_ids)
    targets = torch.cat([chunk_ids, continuation_ids], dim=1)
    first = builder.prefix_ids.numel() + chunk_ids.shape[1]
    device, dtype = model.model.device, model.model.dtype
    inputs = [
        recomputed_input(blocks, row, builder.compression, targets[row, :1], first, device=device, dtype=dtype)
        for row in range(chunk_ids.shape[0])
    ]
    scores, mask = step_logprobs(model.model, inputs, list(targets[:, 1:]), pad_token_id(model.tokenizer))
    return -scores[mask].mean()


def training_pairs(model: CompressedMemoryModel, texts: list[str], continuation_tokens: int) -> torch.Tensor:
    """Every (chunk, continuation) window of the texts, `[pairs, chunk_size + continuation_tokens]` ids."""
    width = model.memory_config.chunking.size + continuation_tokens
    windows = []
    for text in texts:
        ids = torch.tensor(model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        stride = model.memory_config.chunking.size
        windows += [ids[i : i + width] for i in range(0, ids.numel() - width + 1, stride)]
    if not windows:
        raise ValueError(
            f"The texts hold no window of {width} tokens (chunk_size + continuation_tokens); give "
            "longer texts or a smaller chunk_size."
        )
    return torch.stack(windows)


def pretrain(
    model: CompressedMemoryModel,
    texts: list[str],
    out: str | Path,
    config: PretrainConfig | None = None,
    show_progress: bool = True,
) -> list[dict]:
    """Train `model`'s learned compressor on `texts`, resuming from `out` when it holds a run; returns the log."""
    config = config or PretrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = training_pairs(model, texts, config.continuation_tokens)
    compressor = learned_compressor(model)
    learning = {id(w): w.requires_grad for w in [*model.model.parameters(), compressor.memory_embeddings]}
    weights = trainable_weights(model)
    optimizer = torch.optim.AdamW(weights, lr=config.learning_rate)
    step = resume_trainer_state(optimizer, out)
    chunk = model.memory_config.chunking.size
    log = read_log(out / LOG_FILE, step)
    bar = tqdm(total=config.steps, initial=step, desc="Pre-training", unit="step", disable=not show_progress)
    with bar, _restored(model, compressor, learning):
        while step < config.steps:
            order = random.Random(f"{config.seed}:{step}")
            batch = pairs[[order.randrange(len(pairs)) for _ in range(config.batch_size)]]
            started = time.perf_counter()
            loss = reconstruction_loss(model, batch[:, :chunk], batch[:, chunk:])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(weights, config.max_grad_norm)
            optimizer.step()
            step += 1
            log.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "seconds": time.perf_counter() - started,
                    "peak_memory_mib": peak_memory_mib(),
                }
            )
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % config.save_every == 0 or step == config.steps:
                _save(model, optimizer, step, out, log, config)
    return log


def trainable_weights(model: CompressedMemoryModel) -> list[torch.nn.Parameter]:
    """The compressor's memory embeddings and LoRA weights, made trainable; the base model frozen (and,
    when it is 4-bit, kept differentiable: `keep_quantized_differentiable`)."""
    compressor = learned_compressor(model)
    keep_quantized_differentiable(model.model)
    for weight in model.model.parameters():
        weight.requires_grad_(False)
    weights = compressor.weights(model.model)
    for weight in weights:
        weight.requires_grad_(True)
    return weights


def learned_compressor(model: CompressedMemoryModel) -> LearnedCompressor:
    """`model`'s learned compressor, which pre-training trains; refused when it has another."""
    if not isinstance(model.compressor, LearnedCompressor):
        raise TypeError(
            "pretrain trains a learned compressor; build the model with compression method 'learned' "
            "(start_or_resume does)."
        )
    return model.compressor


@contextlib.contextmanager
def _restored(model: CompressedMemoryModel, compressor: LearnedCompressor, learning: dict[int, bool]) -> Iterator[None]:
    """Put back which of the model's and its compressor's weights learn, as `learning` recorded them, when the
    body ends."""
    try:
        yield
    finally:
        for weight in [*model.model.parameters(), compressor.memory_embeddings]:
            weight.requires_grad_(learning.get(id(weight), False))


def _save(
    model: CompressedMemoryModel,
    optimizer: torch.optim.Optimizer,
    step: int,
    out: Path,
    log: list[dict],
    config: PretrainConfig,
) -> None:
    model.save_pretrained(out)
    save_trainer_state(optimizer, step, out, asdict(config))
    write_log(log, out / LOG_FILE, "loss", "reconstruction + continuation loss")


def start_or_resume(
    model: CompressedMemoryModel,
    out: str | Path,
    rank: int = 8,
    seed: int = 0,
    ratio: float | None = None,
    config: MemoryConfig | None = None,
) -> CompressedMemoryModel:
    """`model`'s base with the learned compressor of the run in `out`, or a fresh one (LoRA rank `rank`)
    when `out` holds no run yet. The configuration is `config` (default: `model`'s), compressing with
    method 'learned' at `ratio` (default: the configuration's ratio, else 4), storing blocks in the
    configuration's bits (so that pre-training reads them quantized as its banks will be) and reading
    compressed blocks."""
    current = config or model.memory_config
    stored = current.compression or CompressionConfig()
    if ratio is None:
        ratio = current.compression.ratio if current.compression is not None else None
    compression = CompressionConfig("learned", ratio, bits=stored.bits, group=stored.group)
    learned_ratio = DEFAULT_RATIO if compression.ratio is None else compression.ratio
    config = current.replace(
        compression=compression,
        reading=dataclasses.replace(current.reading, mode="compressed", keep_bits=0, keep_mib=None),
    )
    if (Path(out) / TRAINER_STATE).is_file():
        compressor = LearnedCompressor.load(model.model, Path(out) / "compressor", learned_ratio)
    else:
        compressor = LearnedCompressor.initialise(
            model.model, learned_ratio, config.chunking.size, rank=rank, seed=seed
        )
    return type(model)(
        model.model,
        model.tokenizer,
        memory_config=config,
        base_name=model.base_name,
        show_progress=model.show_progress,
        gate_head=model.gate_head,
        compressor=compressor,
    )
