"""`CompressedMemoryModel`: any Hugging Face causal LM, answering over contexts far longer than its window."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .adapters import ReasonerAdapter
from .bank import MemoryBank, MemoryBlock
from .chunking import Chunk, Context, split_into_chunks, tokenize_context
from .compressors import LearnedCompressor, build_compressor
from .config import MemoryConfig
from .distributed import ONE_PROCESS, compress_into_folder
from .embedded import resolve_model_source
from .fingerprint import BaseFingerprint, fingerprint_model
from .gate import GateHead, build_gate, default_gate_layers
from .gate.head import HEAD_FILE
from .hub import (
    COMPRESSOR_FOLDER,
    REASONER_FOLDER,
    fetch_checkpoint,
    find_checkpoint,
    upload_checkpoint,
    write_config,
)
from .model_card import write_model_card
from .placement import check_placement
from .prompts import PromptBuilder, Question, pad_token_id
from .reasoner import Reasoner, Trace


@dataclass
class CompressedGenerateOutput(GenerateDecoderOnlyOutput):
    """transformers' generate output, plus one `Trace` per row of what the reasoner read and wrote."""

    trace: list[Trace] | None = None


class CompressedMemoryModel:
    """Wraps a causal LM: `generate(..., context=long_text)` answers over contexts of any length.

    Attributes the wrapper does not define (`config`, `device`, `dtype`, ...) are the base model's.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 memory_config: MemoryConfig | None = None, base_name: str | None = None,
                 show_progress: bool = True, gate_head: GateHead | None = None,
                 compressor: LearnedCompressor | None = None, reasoner_adapter: ReasonerAdapter | None = None) -> None:
        check_placement(model)
        self.model = model
        self.tokenizer = tokenizer
        self.memory_config = memory_config or MemoryConfig()
        self.show_progress = show_progress
        self.base_name = base_name or model.config.name_or_path
        self.fingerprint = fingerprint_model(model, tokenizer, self.base_name)
        self.prompts = PromptBuilder(tokenizer, self.memory_config)
        self.gate_head = gate_head
        self.gate_layers = self._resolve_gate_layers()
        learned = self.memory_config.compressor == "learned"
        if compressor is not None and not learned:
            raise ValueError(f"A learned compressor was given but the configuration asks for "
                             f"compressor={self.memory_config.compressor!r}; set compressor='learned'.")
        self.compressor = compressor if learned and compressor is not None else build_compressor(self.memory_config)
        gate = build_gate(self.memory_config, tokenizer, self.gate_layers, gate_head)
        self.reasoner_adapter = reasoner_adapter
        self.reasoner = Reasoner(model, self.prompts, self.memory_config, gate, reasoner_adapter)

    @classmethod
    def from_pretrained(cls, base: str, memory: str | Path | None = None, config: MemoryConfig | None = None, *,
                        revision: str | None = None, base_revision: str | None = None, show_progress: bool = True,
                        **hf_kwargs: Any) -> "CompressedMemoryModel":
        """Load `base` (Hub id or folder) with transformers, plus a compressmem checkpoint `memory`.

        `memory` is a checkpoint folder or a Hub repo id (downloaded once, then read from the Hub cache,
        offline too). `base` may itself be a checkpoint (folder or Hub repo): the base model it was made
        for is then read from it. `revision` is the checkpoint's branch, tag or commit when there is one
        on the Hub, else the base model's; `base_revision` pins the base model's beside a checkpoint's.
        `hf_kwargs` (`torch_dtype`, `device_map`, `quantization_config`, `attn_implementation`,
        `trust_remote_code`, `token`, `cache_dir`, ...) go to transformers untouched; `token`,
        `cache_dir` and `local_files_only` also fetch the checkpoint. `config` overrides the checkpoint's
        `MemoryConfig`; with neither, the training-free defaults are used.
        """
        hub_kwargs = {k: hf_kwargs[k] for k in ("token", "cache_dir", "local_files_only") if k in hf_kwargs}
        source = resolve_model_source(base)
        if memory is not None:
            saved = fetch_checkpoint(memory, revision, **hub_kwargs)
        else:
            saved = find_checkpoint(source, revision, **hub_kwargs)
            if saved is not None:
                base = saved.fingerprint.name
                source = resolve_model_source(base)
        if saved is None or saved.repo_id is None:
            base_revision = base_revision or revision
        if base_revision is not None:
            hf_kwargs["revision"] = base_revision
        model, tokenizer = _load_base(source, hf_kwargs)
        if saved is None:
            return cls(model, tokenizer, config, base, show_progress)
        saved.check_base(fingerprint_model(model, tokenizer, base))
        chosen = config or saved.config
        compressor = adapter = None
        if chosen.compressor == "learned" and saved.compressor_folder is not None:
            compressor = LearnedCompressor.load(model, saved.compressor_folder, chosen.ratio)
        if saved.reasoner_folder is not None:
            adapter = ReasonerAdapter.load(model, saved.reasoner_folder)
        return cls(model, tokenizer, chosen, base, show_progress, saved.gate_head, compressor, adapter)

    def with_config(self, memory_config: MemoryConfig, show_progress: bool | None = None) -> "CompressedMemoryModel":
        """The same base model (no reload, no copy) under another `MemoryConfig`, e.g. to compare modes."""
        show = self.show_progress if show_progress is None else show_progress
        keeps_learned = memory_config.compressor == "learned" and isinstance(self.compressor, LearnedCompressor)
        learned = self.compressor if keeps_learned else None
        return type(self)(self.model, self.tokenizer, memory_config, self.base_name, show, self.gate_head, learned,
                          self.reasoner_adapter)

    def __getattr__(self, name: str) -> Any:
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def save_pretrained(self, directory: str | Path, evaluation: Mapping[str, float | str] | None = None) -> None:
        """Write the checkpoint: `compressmem_config.json` (format, base model fingerprint, MemoryConfig)
        and the trained parts the wrapper has: `gate_head.safetensors`, `compressor/` (the learned
        compressor's LoRA adapter in PEFT layout plus its memory embeddings) and `reasoner/` (the
        reasoner's LoRA adapter), plus a generated model card (`README.md`) listing `evaluation`'s
        numbers when given; a card the user edited is kept.

        Never the base model's weights; the training-free compressors and gates have none of their own.
        """
        self._save_checkpoint(Path(directory), str(directory), evaluation)

    def _save_checkpoint(self, directory: Path, location: str, evaluation: Mapping[str, float | str] | None) -> None:
        """`save_pretrained`, with the model card telling users to load it from `location`."""
        write_config(directory, self.fingerprint, self.memory_config)
        parts = []
        if self.gate_head is not None:
            self.gate_head.save(directory / HEAD_FILE)
            parts.append("gate head")
        if isinstance(self.compressor, LearnedCompressor):
            self.compressor.save(self.model, directory / COMPRESSOR_FOLDER)
            parts.append(f"learned compressor (LoRA and memory embeddings, ratio {self.compressor.ratio:g})")
        if self.reasoner_adapter is not None:
            self.reasoner_adapter.save(self.model, directory / REASONER_FOLDER)
            parts.append("reasoner adapter (LoRA)")
        write_model_card(directory, location, self.fingerprint, self.memory_config, parts, evaluation)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    revision: str | None = None, commit_message: str = "Upload compressmem checkpoint",
                    evaluation: Mapping[str, float | str] | None = None) -> str:
        """Save the checkpoint (as `save_pretrained`) and upload it to the Hub model repo `repo_id` as one
        commit, creating the repo (and the branch `revision`) when missing; returns the commit's URL."""
        return upload_checkpoint(lambda folder: self._save_checkpoint(folder, repo_id, evaluation), repo_id,
                                 private=private, token=token, revision=revision, commit_message=commit_message)

    @torch.no_grad()
    def compress(self, context: Context, *, bank_device: torch.device | str | None = None,
                 show_progress: bool | None = None) -> MemoryBank:
        """Chunk `context` token-exactly and compress every chunk, batched, into a `MemoryBank`.

        The bank can answer any number of questions; `bank_device="cpu"` keeps it off the GPU (blocks
        then move to the model's device one at a time while reading). For contexts too large for
        memory, use `compress_stream`, which keeps the bank on disk.
        """
        chunks = split_into_chunks(tokenize_context(context, self.tokenizer), self.memory_config.chunk_size)
        bank_device = self.model.device if bank_device is None else torch.device(bank_device)
        show = self.show_progress if show_progress is None else show_progress
        with tqdm(total=len(chunks), desc="Compressing", unit="chunk", disable=not show) as bar:
            blocks, prefix_keys, prefix_values = self._compress_into_blocks(chunks, bank_device, bar)
        return MemoryBank(blocks, self.prompts.section_prefix_ids(), prefix_keys, prefix_values, *self._bank_labels())

    @torch.no_grad()
    def compress_stream(self, pieces: Iterable[str], directory: str | Path, *, show_progress: bool | None = None,
                        shard_blocks: int = 256) -> MemoryBank:
        """Compress text that arrives in pieces (e.g. `text_pieces(path)`) into a bank folder on disk.

        Blocks are written shard by shard as they are made, so memory stays flat however long the
        text is; the returned bank reads its blocks back from `directory` one at a time. Pieces are
        tokenized one by one: cut them before a space (as `text_pieces` does) to keep the tokens
        identical to tokenizing the whole text. To share the work among the processes of
        `accelerate launch`, call `compressmem.distributed.compress_distributed` in each instead.
        """
        return compress_into_folder(self, pieces, directory, ONE_PROCESS, show_progress=show_progress,
                                    shard_blocks=shard_blocks)

    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                 context: Context | list[Context] | None = None,
                 memory: MemoryBank | list[MemoryBank] | None = None, **generation_kwargs: Any):
        """transformers' `generate()`, reading `context` (or a precomputed `memory` bank) first.

        Returns what transformers returns: prompt ids followed by new ids, or, with
        `return_dict_in_generate=True`, an output whose `.sequences` are those and whose `.trace`
        holds, per row, the gate scores, the blocks read and the working memory after each step.
        Without `context`/`memory` this is exactly the base model's `generate()`, unless the prompt
        is longer than `direct_max_tokens`: then each row's last user turn (or its last
        `query_tokens` tokens) is the question and the rest of the prompt the context.
        """
        input_ids = generation_kwargs.pop("inputs", input_ids)
        _check_prompt(input_ids, attention_mask)
        if context is not None and memory is not None:
            raise ValueError("Pass either context= (text or ids to compress now) or memory= (a bank), not both.")
        rows = _unpadded_rows(input_ids, attention_mask)
        if context is None and memory is None:
            if input_ids.shape[1] <= self._direct_max_tokens():
                return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generation_kwargs)
            splits = [self.prompts.split_long_prompt(row) for row in rows]
            questions = [question for _, question in splits]
            banks = [self.compress(text) for text, _ in splits]
        else:
            questions = [self.prompts.find_question(row) for row in rows]
            banks = self._banks_for_rows(len(rows), context, memory)
        return self.answer_from_banks(input_ids, questions, banks, generation_kwargs)

    def answer(self, question: str, context: Context | None = None, memory: MemoryBank | None = None,
               **generation_kwargs: Any) -> str:
        """Ask one question in plain text, with the chat template applied for you; returns the answer text."""
        ids = self.prompt_ids(question)
        generation_kwargs.setdefault("max_new_tokens", 128)
        generation_kwargs.setdefault("do_sample", False)
        out = self.generate(ids.to(self.model.device), context=context, memory=memory, **generation_kwargs)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    def prompt_ids(self, question: str) -> torch.Tensor:
        """`[1, n]` prompt ids for a plain-text user turn: the chat template when the tokenizer has one."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string.")
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                      add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True)["input_ids"]
        return self.tokenizer(question, return_tensors="pt")["input_ids"]

    def _compress_into_blocks(self, chunks: list[Chunk], bank_device: torch.device, bar: tqdm) -> tuple:
        """The chunks' blocks (KV only when the configuration needs it) plus the shared prefix KV."""
        count = len(chunks)
        keys: list = [None] * count
        values: list = [None] * count
        positions: list = [None] * count
        prefix_keys = prefix_values = None
        if self.memory_config.needs_kv:
            keys, values, positions, prefix_keys, prefix_values = self._compress_chunks(chunks, bank_device, bar)
        else:
            bar.update(count)
        blocks = [MemoryBlock(chunk.token_ids, keys[i], values[i], positions[i], chunk.document, chunk.token_start,
                              chunk.char_span) for i, chunk in enumerate(chunks)]
        return blocks, prefix_keys, prefix_values

    def _compress_chunks(self, chunks: list[Chunk], bank_device: torch.device, bar: tqdm) -> tuple:
        """Per-chunk (keys, values, positions) plus the shared prefix KV, batching chunks of equal length."""
        count = len(chunks)
        keys: list = [None] * count
        values: list = [None] * count
        positions: list = [None] * count
        prefix_ids = self.prompts.section_prefix_ids()
        layers = self._bank_layers()
        keep_values = self.memory_config.read == "compressed"
        by_length = defaultdict(list)
        for i, chunk in enumerate(chunks):
            by_length[chunk.token_ids.numel()].append(i)
        batch_size = self.memory_config.compress_batch_size
        for members in by_length.values():
            for start in range(0, len(members), batch_size):
                batch = members[start:start + batch_size]
                batch_ids = torch.stack([chunks[i].token_ids for i in batch])
                out = self.compressor.compress(self.model, prefix_ids, batch_ids, layers, keep_values)
                for row, i in enumerate(batch):
                    keys[i] = out.keys[row].to(bank_device)
                    values[i] = None if out.values is None else out.values[row].to(bank_device)
                    positions[i] = out.positions[row].to(bank_device)
                bar.update(len(batch))
        prefix_values = None if out.prefix_values is None else out.prefix_values.to(bank_device)
        return keys, values, positions, out.prefix_keys.to(bank_device), prefix_values

    def _bank_labels(self) -> tuple[tuple[int, ...], BaseFingerprint, dict[str, Any]]:
        """What a bank records of how it was made: its KV layers, the base model, the settings."""
        config = self.memory_config
        settings = {"chunk_size": config.chunk_size, "compressor": config.compressor, "ratio": config.ratio,
                    "score": config.score, "read": config.read, "section_header": config.section_header}
        return (self._bank_layers() if config.needs_kv else ()), self.fingerprint, settings

    def answer_from_banks(self, input_ids: torch.Tensor, questions: list[Question], banks: list[MemoryBank],
                          generation_kwargs: dict[str, Any], update_sampling: dict[str, Any] | None = None):
        """`generate()`'s work once each row has its question and its bank: read, then answer.

        `generation_kwargs` apply to the answer; `update_sampling` (e.g. `do_sample`, `temperature`)
        to the working-memory updates, which are otherwise greedy. Rollouts for reinforcement
        learning sample both.
        """
        for bank in banks:
            bank.check_compatible(self.fingerprint)
        traces = self.reasoner.run([q.text for q in questions], banks, self.show_progress, update_sampling)
        prompts = [self.prompts.answer_ids(q, trace.memory) for q, trace in zip(questions, traces)]
        width = max(p.numel() for p in prompts)
        pad_id = pad_token_id(self.tokenizer)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - prompt.numel():] = prompt
            mask[row, width - prompt.numel():] = 1
        generation_kwargs.setdefault("pad_token_id", pad_id)
        with self.reasoner.active():
            out = self.model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                      **generation_kwargs)
        sequences = out.sequences if hasattr(out, "sequences") else out
        sequences = torch.cat([input_ids, sequences[:, width:].to(input_ids.device)], dim=1)
        if not generation_kwargs.get("return_dict_in_generate"):
            return sequences
        fields = {key: value for key, value in out.items() if key != "sequences"}
        return CompressedGenerateOutput(sequences=sequences, trace=traces, **fields)

    def _banks_for_rows(self, batch: int, context: Any, memory: Any) -> list[MemoryBank]:
        """One bank per row: a per-row list when its length is the batch size (and batch > 1), else shared."""
        if memory is not None:
            banks = list(memory) if isinstance(memory, (list, tuple)) else [memory] * batch
            if len(banks) != batch or not all(isinstance(b, MemoryBank) for b in banks):
                raise ValueError(f"memory must be one MemoryBank or a list of {batch} banks (one per row).")
            return banks
        if batch > 1 and isinstance(context, (list, tuple)) and len(context) == batch:
            return [self.compress(row_context) for row_context in context]
        return [self.compress(context)] * batch

    def _resolve_gate_layers(self) -> tuple[int, ...]:
        """The layers whose keys the gate reads: the trained head's own, else the config's, else a default."""
        num_layers = self.model.config.get_text_config().num_hidden_layers
        configured = self.memory_config.gate_layers
        if self.gate_head is not None:
            self.gate_head.check_model(self.model)
            if configured is not None and tuple(configured) != self.gate_head.layers:
                raise ValueError(f"gate_layers {list(configured)} differ from the layers the gate head was trained on "
                                 f"({list(self.gate_head.layers)}); leave gate_layers unset to use the head's.")
            return self.gate_head.layers
        layers = configured or default_gate_layers(num_layers)
        if any(not 0 <= i < num_layers for i in layers):
            raise ValueError(f"gate_layers {list(layers)} must lie in 0..{num_layers - 1} for this model.")
        return tuple(layers)

    def _bank_layers(self) -> tuple[int, ...]:
        if self.memory_config.read == "compressed":
            return tuple(range(self.model.config.get_text_config().num_hidden_layers))
        return tuple(self.gate_layers) if self.memory_config.gate_needs_keys else ()

    def _direct_max_tokens(self) -> int:
        if self.memory_config.direct_max_tokens is not None:
            return self.memory_config.direct_max_tokens
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None) or 2**31


def _load_base(source: str, hf_kwargs: dict[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model (in eval mode) and its tokenizer from `source` (an id or folder), through transformers."""
    model = AutoModelForCausalLM.from_pretrained(source, **hf_kwargs)
    tokenizer_kwargs = {k: hf_kwargs[k] for k in ("trust_remote_code", "revision", "token", "cache_dir",
                                                  "local_files_only") if k in hf_kwargs}
    tokenizer = AutoTokenizer.from_pretrained(source, **tokenizer_kwargs)
    return model.eval(), tokenizer


def _check_prompt(input_ids: Any, attention_mask: Any) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a [batch, length] tensor of token ids, as for transformers' generate().")
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}.")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
                         f"{tuple(input_ids.shape)}.")


def _unpadded_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    if attention_mask is None:
        return [row.cpu() for row in input_ids]
    return [row[mask.bool()].cpu() for row, mask in zip(input_ids, attention_mask)]
