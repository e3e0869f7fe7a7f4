"""Compressor pre-training: from a block alone, reconstruct its chunk and continue the text.

The reasoner is the frozen base model (adapter off). Each example is a chunk and the tokens that
follow it in the text: the chunk is compressed into a block by the learned compressor, with
gradients, and the base model, reading only that block (after the shared section prefix, at the
positions the reasoner uses), is scored by cross-entropy on the chunk's own tokens (reconstruction)
and then on the next ones (continuation). The block is read exactly as inference reads a block of
a bank this model builds, quantization included (`reader.recomputed_input`). Only the compressor's
LoRA adapter and memory embeddings learn. Checkpoints are compressmem checkpoints plus
`trainer_state.safetensors` (step and AdamW state, no pickle), so a run resumes where it stopped.

A compressor of LycheeMemory's design (`design="lychee"` in `start_or_resume`) trains with the objective
the paper describes (Activation Beacon's): the language-model loss on the tokens that follow the compressed
context, here the continuation read after the chunk's block alone, their reader's way (`reader/step.py`),
at a compression ratio drawn for every step from the checkpoint's ratio mix ("step-random"). Only its extra
projections and memory embedding learn.

What a trainer needs of a compressor is `Trainee`: the weights that learn and the loss of a batch;
`trainee(model)` gives the one for the model's compressor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ..compressors import LearnedCompressor, LycheeCompressor
from ..compressors.lychee import OWN_FILE, prompt_position
from ..config import DEFAULT_RATIO, ChunkingConfig, CompressionConfig, MemoryConfig
from ..hf.adapters import keep_quantized_differentiable
from ..model import CompressedMemoryModel
from ..reader import StepInput, pad_token_id, recomputed_input, step_logprobs
from .state import TRAINER_STATE, peak_memory_mib, read_log, resume_trainer_state, save_trainer_state, write_log

LOG_FILE = "pretrain_log.jsonl"
DESIGNS = ("learned", "lychee")  # compressmem's LoRA compressor; LycheeMemory's (Activation Beacon's) design
LYCHEE_RATIOS = (2, 4, 8)  # the default ratio mix of a new LycheeMemory-design compressor


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


def continuation_loss(
    model: CompressedMemoryModel, chunk_ids: torch.Tensor, continuation_ids: torch.Tensor, ratio: int
) -> torch.Tensor:
    """LycheeMemory's pre-training objective on a block: the frozen base model's cross-entropy on
    `continuation_ids` `[B, t]` after reading only the block of `chunk_ids` `[B, n]` that `model`'s
    LycheeMemory-design compressor makes at `ratio` (with gradients), read exactly as a bank of such blocks is:
    the block's entries (quantized as the bank would store them, gradients passing straight through), then the
    bank's section prefix and the continuation from RoPE position `prompt_position(n, ratio)`."""
    builder = model.builder
    compressor = model.compressor
    if not isinstance(compressor, LycheeCompressor) or builder.compression is None:
        raise TypeError("continuation_loss trains a LycheeMemory-design compressor (start_or_resume(design='lychee')).")
    blocks = compressor.at_ratio(ratio).forward_blocks(
        model.model, builder.prefix_ids, chunk_ids, builder.layers, keep_values=True
    )
    device, dtype = model.model.device, model.model.dtype
    prefix = builder.prefix_ids.to(device)
    skip = blocks.prefix_keys.shape[2]  # their reader reads a block's entries alone, the prefix as tokens
    first = prompt_position(chunk_ids.shape[1], ratio)
    inputs = []
    for row in range(chunk_ids.shape[0]):
        read = recomputed_input(blocks, row, builder.compression, continuation_ids[row, :1], 0, device, dtype)
        assert read.keys is not None and read.values is not None
        ids = torch.cat([prefix, continuation_ids[row, :1].to(device)])
        inputs.append(StepInput(read.keys[:, :, skip:], read.values[:, :, skip:], ids, first))
    scores, mask = step_logprobs(model.model, inputs, list(continuation_ids[:, 1:]), pad_token_id(model.tokenizer))
    return -scores[mask].mean()


class Trainee(Protocol):
    """What `pretrain` needs of a compressor: the weights that learn (made trainable, the base model frozen),
    the loss of a batch of (chunk, continuation) ids at a step, and what the log calls that loss."""

    objective: str

    def tracked(self) -> list[torch.Tensor]:
        """Every weight whose `requires_grad` `weights` may change (read before it does, put back after)."""
        ...

    def weights(self) -> list[torch.nn.Parameter]: ...

    def loss(self, chunk_ids: torch.Tensor, continuation_ids: torch.Tensor, step: int) -> torch.Tensor: ...


@dataclass
class LearnedTrainee:
    """compressmem's learned compressor: LoRA and memory embeddings, reconstruction + continuation loss."""

    model: CompressedMemoryModel
    objective: str = "reconstruction + continuation loss"

    def tracked(self) -> list[torch.Tensor]:
        return [*self.model.model.parameters(), learned_compressor(self.model).memory_embeddings]

    def weights(self) -> list[torch.nn.Parameter]:
        return trainable_weights(self.model)

    def loss(self, chunk_ids: torch.Tensor, continuation_ids: torch.Tensor, step: int) -> torch.Tensor:
        return reconstruction_loss(self.model, chunk_ids, continuation_ids)


@dataclass
class LycheeTrainee:
    """A LycheeMemory-design compressor: its extra projections and memory embedding, the continuation loss at
    a ratio drawn for every step from its ratio mix (seeded by `seed` and the step, so a resumed run draws the
    same ratios)."""

    model: CompressedMemoryModel
    seed: int = 0
    objective: str = "continuation loss after the block (LycheeMemory's objective), ratio drawn per step"

    @property
    def compressor(self) -> LycheeCompressor:
        compressor = self.model.compressor
        assert isinstance(compressor, LycheeCompressor)
        return compressor

    def ratio(self, step: int) -> int:
        """The ratio of step `step` (their "step-random" mix over the ratios that divide the window)."""
        settings = self.compressor.settings
        ratios = [r for r in settings.ratios if settings.window % r == 0]
        return random.Random(f"{self.seed}:ratio:{step}").choice(ratios)

    def tracked(self) -> list[torch.Tensor]:
        return [*self.model.model.parameters(), *self.compressor.extras.values()]

    def weights(self) -> list[torch.nn.Parameter]:
        keep_quantized_differentiable(self.model.model)
        for weight in self.model.model.parameters():
            weight.requires_grad_(False)
        weights = self.compressor.weights()
        for weight in weights:
            weight.requires_grad_(True)
        return weights

    def loss(self, chunk_ids: torch.Tensor, continuation_ids: torch.Tensor, step: int) -> torch.Tensor:
        return continuation_loss(self.model, chunk_ids, continuation_ids, self.ratio(step))


def trainee(model: CompressedMemoryModel, seed: int = 0) -> Trainee:
    """The `Trainee` of `model`'s compressor; refused when it has none that pre-training trains."""
    if isinstance(model.compressor, LycheeCompressor):
        return LycheeTrainee(model, seed)
    return LearnedTrainee(learned_model(model))


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
    """Train `model`'s compressor (learned, or of LycheeMemory's design: `trainee`) on `texts`, resuming from
    `out` when it holds a run; returns the log."""
    config = config or PretrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = training_pairs(model, texts, config.continuation_tokens)
    learner = trainee(model, config.seed)
    watched = learner.tracked()
    learning = {id(w): w.requires_grad for w in watched}
    weights = learner.weights()
    optimizer = torch.optim.AdamW(weights, lr=config.learning_rate)
    step = resume_trainer_state(optimizer, out)
    chunk = model.memory_config.chunking.size
    log = read_log(out / LOG_FILE, step)
    bar = tqdm(total=config.steps, initial=step, desc="Pre-training", unit="step", disable=not show_progress)
    with bar, _restored([*watched, *weights], learning):
        while step < config.steps:
            order = random.Random(f"{config.seed}:{step}")
            batch = pairs[[order.randrange(len(pairs)) for _ in range(config.batch_size)]]
            started = time.perf_counter()
            loss = learner.loss(batch[:, :chunk], batch[:, chunk:], step)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(weights, config.max_grad_norm)
            optimizer.step()
            step += 1
            entry = {
                "step": step,
                "loss": loss.item(),
                "seconds": time.perf_counter() - started,
                "peak_memory_mib": peak_memory_mib(),
            }
            if isinstance(learner, LycheeTrainee):
                entry["ratio"] = learner.ratio(step - 1)
            log.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % config.save_every == 0 or step == config.steps:
                _save(model, optimizer, step, out, log, config, learner.objective)
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
            "pretrain trains a learned compressor or one of LycheeMemory's design; build the model with "
            "compression method 'learned' (start_or_resume does)."
        )
    return model.compressor


def learned_model(model: CompressedMemoryModel) -> CompressedMemoryModel:
    """`model`, refused unless its compressor is a learned one (`learned_compressor`)."""
    learned_compressor(model)
    return model


@contextlib.contextmanager
def _restored(weights: list[torch.Tensor], learning: dict[int, bool]) -> Iterator[None]:
    """Put back which of `weights` learn, as `learning` recorded them, when the body ends."""
    try:
        yield
    finally:
        for weight in weights:
            weight.requires_grad_(learning.get(id(weight), False))


def _save(
    model: CompressedMemoryModel,
    optimizer: torch.optim.Optimizer,
    step: int,
    out: Path,
    log: list[dict],
    config: PretrainConfig,
    objective: str,
) -> None:
    model.save_pretrained(out)
    save_trainer_state(optimizer, step, out, asdict(config))
    write_log(log, out / LOG_FILE, "loss", objective)


def start_or_resume(
    model: CompressedMemoryModel,
    out: str | Path,
    rank: int = 8,
    seed: int = 0,
    ratio: float | None = None,
    config: MemoryConfig | None = None,
    design: str = "learned",
    ratios: tuple[int, ...] = LYCHEE_RATIOS,
) -> CompressedMemoryModel:
    """`model`'s base with the compressor of the run in `out`, or a fresh one when `out` holds no run yet.
    The configuration is `config` (default: `model`'s), compressing with method 'learned' at `ratio` (default:
    the configuration's ratio, else 4), storing blocks in the configuration's bits (so that pre-training reads
    them quantized as its banks will be) and reading compressed blocks.

    `design` "learned": compressmem's learned compressor (LoRA rank `rank`). "lychee": LycheeMemory's design
    (`LycheeCompressor.initialise`), its window the configuration's chunk size, its ratio mix `ratios` (every
    one dividing the window; `ratio` must be one of them)."""
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {list(DESIGNS)}, got {design!r}.")
    current = config or model.memory_config
    stored = current.compression or CompressionConfig()
    if ratio is None:
        ratio = current.compression.ratio if current.compression is not None else None
    if design == "lychee" and ratio is None:
        ratio = 4 if 4 in ratios else ratios[0]
    compression = CompressionConfig("learned", ratio, bits=stored.bits, group=stored.group)
    learned_ratio = DEFAULT_RATIO if compression.ratio is None else compression.ratio
    config = current.replace(
        compression=compression,
        reading=dataclasses.replace(current.reading, mode="compressed", keep_bits=0, keep_mib=None),
    )
    resuming = (Path(out) / TRAINER_STATE).is_file()
    compressor: LearnedCompressor | LycheeCompressor
    if design == "lychee":
        window = config.chunking.size
        if learned_ratio != int(learned_ratio) or int(learned_ratio) not in ratios:
            raise ValueError(
                f"A LycheeMemory-design compressor compresses at one of its ratios {list(ratios)}; "
                f"got {learned_ratio:g}."
            )
        if resuming:
            compressor = LycheeCompressor.load(model.model, Path(out) / OWN_FILE, int(learned_ratio))
            if compressor.settings.window != window:
                config = config.replace(chunking=ChunkingConfig(compressor.settings.window))
        else:
            compressor = LycheeCompressor.initialise(model.model, window, tuple(ratios), int(learned_ratio))
    elif resuming:
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
