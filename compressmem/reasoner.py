"""The scan loop (DESIGN §3.4): gate the blocks, read the passed ones into a working memory, in order.

Rows of a batch advance together: at each step every row whose gate passed a block joins one
batched `generate()` call that rewrites that row's working memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, GenerationConfig, PreTrainedModel

from .adapters import ReasonerAdapter
from .bank import BankMismatchError, MemoryBank
from .config import MemoryConfig
from .gate import Gate
from .memory import update_memory
from .placement import layer_devices
from .prompts import PromptBuilder, pad_token_id


@dataclass
class ReadStep:
    """One working-memory update: the block read, what the model wrote (text and token ids), the memory
    that resulted, and the gate's scores when the block was chosen."""

    block: int
    memory: str
    output: str
    gate_scores: list[float] | None = None
    recall: bool = False
    output_ids: list[int] = field(default_factory=list)


@dataclass
class Trace:
    """What the reasoner did for one row: every step, and the memory the answer was written from."""

    question: str
    num_blocks: int
    steps: list[ReadStep] = field(default_factory=list)
    final_gate_scores: list[float] | None = None

    @property
    def blocks_read(self) -> list[int]:
        return [step.block for step in self.steps]

    @property
    def memory(self) -> str:
        return self.steps[-1].memory if self.steps else ""


@dataclass
class _Row:
    bank: MemoryBank
    trace: Trace
    cursor: int = 0
    recalling: bool = False
    done: bool = False

    def next_block(self, scores: torch.Tensor | None, config: MemoryConfig) -> int | None:
        """The next block to read, or None when this row has finished reading."""
        read = set(self.trace.blocks_read)
        if config.max_steps is not None and len(read) >= config.max_steps:
            return None
        if scores is None:
            return self._advance(self.cursor) if self.cursor < len(self.bank) else None
        passing = _passing(scores, config)
        if config.read_order == "score":
            return self._best_unread(scores, passing, read)
        if not self.recalling:
            ahead = [b for b in range(self.cursor, len(self.bank)) if passing[b] and b not in read]
            if ahead:
                return self._advance(ahead[0])
            self.recalling = config.recall
        return self._best_unread(scores, passing, read) if self.recalling else None

    @staticmethod
    def _best_unread(scores: torch.Tensor, passing: list[bool], read: set[int]) -> int | None:
        unread = [b for b in scores.argsort(descending=True, stable=True).tolist() if passing[b] and b not in read]
        return unread[0] if unread else None

    def _advance(self, block: int) -> int:
        self.cursor = block + 1
        return block


class Reasoner:
    """Reads memory banks into working memories; `run()` returns one `Trace` per question."""

    def __init__(self, model: PreTrainedModel, prompts: PromptBuilder, config: MemoryConfig,
                 gate: Gate | None, adapter: ReasonerAdapter | None = None) -> None:
        self.model = model
        self.prompts = prompts
        self.config = config
        self.gate = gate
        self.adapter = adapter

    def active(self) -> contextlib.AbstractContextManager:
        """The reasoner's own adapter switched on (a no-op without one), for every pass that reads or writes."""
        return self.adapter.active(self.model) if self.adapter is not None else contextlib.nullcontext()

    def run(self, questions: list[str], banks: list[MemoryBank], show_progress: bool = True,
            sampling: dict[str, Any] | None = None) -> list[Trace]:
        """Read each row's bank into a working memory; `sampling` (`do_sample`, `temperature`, `top_p`, ...)
        replaces greedy decoding of the updates, as reinforcement-learning rollouts need."""
        if self.config.read == "compressed" and not all(bank.has_values for bank in banks):
            raise BankMismatchError(
                "read='compressed' needs a bank with compressed values at every layer, but this bank holds only "
                "the gate's keys (it was built with read='raw'); rebuild it with this MemoryConfig.")
        rows = [_Row(bank, Trace(question, len(bank))) for question, bank in zip(questions, banks)]
        indexes = {}
        if self.gate is not None:
            for bank in banks:
                if id(bank) not in indexes:
                    indexes[id(bank)] = self.gate.index(bank, self.model)
        bar = tqdm(desc="Reading", unit="block", disable=not show_progress, leave=False)
        while True:
            pending = [row for row in rows if not row.done]
            if not pending:
                break
            scores = self._score(pending, indexes)
            reads = []
            for row, row_scores in zip(pending, scores):
                block = row.next_block(row_scores, self.config)
                if block is None:
                    row.done = True
                    row.trace.final_gate_scores = None if row_scores is None else row_scores.tolist()
                else:
                    reads.append((row, block, row_scores))
            if reads:
                self._read(reads, sampling)
                bar.update(len(reads))
        bar.close()
        return [row.trace for row in rows]

    def _score(self, rows: list[_Row], indexes: dict) -> list[torch.Tensor | None]:
        if self.gate is None:
            return [None] * len(rows)
        scores: list[torch.Tensor | None] = [None] * len(rows)
        for bank_id, index in indexes.items():
            members = [i for i, row in enumerate(rows) if id(row.bank) == bank_id]
            if not members:
                continue
            prompts = [self.prompts.gate_text(rows[i].trace.question, rows[i].trace.memory) for i in members]
            for i, row_scores in zip(members, self.gate.score(self.model, prompts, index).cpu()):
                scores[i] = row_scores
        return scores

    def _read(self, reads: list[tuple[_Row, int, torch.Tensor | None]], sampling: dict[str, Any] | None) -> None:
        inputs = [self._update_input(row, block) for row, block, _ in reads]
        budget = self.config.note_tokens if self.config.memory_update == "append" else self.config.memory_tokens
        tokenizer = self.prompts.tokenizer
        with self.active():
            new_ids = generate_update_ids(self.model, tokenizer, inputs, budget, exact=self.config.fixed_update_tokens,
                                          sampling=sampling)
        for (row, block, row_scores), ids in zip(reads, new_ids):
            output = tokenizer.decode(ids, skip_special_tokens=True).strip()
            section = tokenizer.decode(row.bank.blocks[block].token_ids, skip_special_tokens=True)
            memory = update_memory(row.trace.memory, output, section, row.trace.question, self.config, tokenizer)
            row.trace.steps.append(ReadStep(
                block=block, memory=memory, output=output, recall=row.recalling, output_ids=ids.tolist(),
                gate_scores=None if row_scores is None else row_scores.tolist()))

    def _update_input(self, row: _Row, block_index: int) -> "UpdateInput":
        bank, block = row.bank, row.bank.blocks[block_index]
        prompt = self.prompts.update_ids(row.trace.question, row.trace.memory)
        if self.config.read == "raw":
            return UpdateInput(None, None, torch.cat([bank.prefix_ids, block.token_ids, prompt]), 0)
        place = dict(device=self.model.device, dtype=self.model.dtype)  # a bank may come from another dtype
        keys = torch.cat([bank.prefix_keys.to(**place), block.keys.to(**place)], dim=2)
        values = torch.cat([bank.prefix_values.to(**place), block.values.to(**place)], dim=2)
        return UpdateInput(keys, values, prompt, bank.prefix_ids.numel() + block.num_tokens)


@dataclass
class UpdateInput:
    """One row of a memory update: an optional KV prefix `[layers, kv_heads, m, d]`, the tokens read
    after it, and the RoPE position of the first of those tokens."""

    keys: torch.Tensor | None
    values: torch.Tensor | None
    input_ids: torch.Tensor
    first_position: int


def generate_updates(model: PreTrainedModel, tokenizer, inputs: list[UpdateInput], max_new_tokens: int,
                     exact: bool = False) -> list[str]:
    """Greedy-decode each row's new working memory as text (see `generate_update_ids`)."""
    ids = generate_update_ids(model, tokenizer, inputs, max_new_tokens, exact)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def generate_update_ids(model: PreTrainedModel, tokenizer, inputs: list[UpdateInput], max_new_tokens: int,
                        exact: bool = False, sampling: dict[str, Any] | None = None) -> list[torch.Tensor]:
    """Decode each row's new working memory: its new token ids, up to and including end-of-sequence.

    Greedy unless `sampling` gives generation settings; `exact` decodes exactly `max_new_tokens`
    tokens per row, past end-of-sequence (for timing).

    Prefixes are left-padded into one `DynamicCache` and prompts left-padded after them; the 2-D
    attention mask hides the padding and explicit position ids place each prompt after its own block.
    """
    device = model.device
    batch = len(inputs)
    prefix_width = max((row.keys.shape[2] for row in inputs if row.keys is not None), default=0)
    prompt_width = max(row.input_ids.numel() for row in inputs)
    pad_id = pad_token_id(tokenizer)
    ids = torch.full((batch, prefix_width + prompt_width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    positions = torch.zeros_like(ids)
    for row, item in enumerate(inputs):
        length = item.input_ids.numel()
        ids[row, -length:] = item.input_ids
        mask[row, -length:] = 1
        positions[row, -length:] = torch.arange(item.first_position, item.first_position + length)
        if item.keys is not None:
            mask[row, prefix_width - item.keys.shape[2]:prefix_width] = 1
    cache = _padded_cache(inputs, prefix_width, layer_devices(model)) if prefix_width else None
    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    settings = dict(do_sample=False) if sampling is None else dict(sampling)
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens if exact else None,
                              pad_token_id=pad_id, eos_token_id=eos, **settings)
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             position_ids=positions.to(device), past_key_values=cache, generation_config=config)
    return [cut_at_eos(row, eos) for row in out[:, ids.shape[1]:].cpu()]


def cut_at_eos(ids: torch.Tensor, eos: int | list[int] | None) -> torch.Tensor:
    """Generated ids up to and including the first end-of-sequence token (the padding after it dropped)."""
    if eos is None:
        return ids
    stops = torch.isin(ids, torch.tensor(eos if isinstance(eos, list) else [eos])).nonzero()
    return ids[:stops[0, 0] + 1] if stops.numel() else ids


def _padded_cache(inputs: list[UpdateInput], width: int, devices: list[torch.device]) -> DynamicCache:
    """The rows' prefixes left-padded to `width`, each layer's on the device that layer runs on."""
    reference = next(row.keys for row in inputs if row.keys is not None)
    layers, kv_heads, _, dim = reference.shape
    keys = reference.new_zeros(len(inputs), layers, kv_heads, width, dim)
    values = torch.zeros_like(keys)
    for row, item in enumerate(inputs):
        if item.keys is not None:
            keys[row, :, :, width - item.keys.shape[2]:] = item.keys
            values[row, :, :, width - item.values.shape[2]:] = item.values
    return DynamicCache([(keys[:, i].to(devices[i]), values[:, i].to(devices[i])) for i in range(layers)])


def _passing(scores: torch.Tensor, config: MemoryConfig) -> list[bool]:
    """Blocks the gate lets through: among the `gate_top_k` best and at or above `gate_threshold`."""
    passing = torch.ones_like(scores, dtype=torch.bool)
    if config.gate_top_k is not None:
        passing = torch.zeros_like(passing)
        passing[scores.topk(min(config.gate_top_k, scores.numel())).indices] = True
    if config.gate_threshold is not None:
        passing &= scores >= config.gate_threshold
    return passing.tolist()
