"""`CompressedMemoryModel`: any Hugging Face causal LM, answering over contexts far longer than its window.

The façade wires the stages together and holds no stage's logic: `BankBuilder` (compression.py)
turns chunks into a bank, the gate and the `Reasoner` (reader/) read it into notes, and the answer
is generated from the notes.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, overload

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerateOutput

from .bank import BankNeeds, MemoryBank, check_stream_settings, stream_settings
from .chunking import Context, check_pieces, split_into_chunks, tokenize_context
from .compression import BankBuilder
from .compressors import Compressor, LearnedCompressor, LycheeCompressor, build_compressor
from .compressors.lychee import POINTER_FILE, is_lychee_source
from .config import DEFAULT_RATIO, ConfigError, MemoryConfig
from .distributed import ONE_PROCESS, Processes, compress_into_folder
from .embedded import resolve_model_source
from .errors import ContextError
from .gate import GateHead, build_gate, default_gate_layers
from .gate.head import HEAD_FILE
from .hf.adapters import ReasonerAdapter, adapter_active
from .hf.fingerprint import fingerprint_model
from .hf.generation import generation_model
from .hf.placement import check_placement, input_embedding_weight
from .hf.sliding import check_read_fits, check_sliding_window
from .hf.tokens import chat_ids, decode_text, text_ids
from .hub import (
    COMPRESSOR_FOLDER,
    REASONER_FOLDER,
    Checkpoint,
    fetch_checkpoint,
    find_checkpoint,
    upload_checkpoint,
    write_config,
)
from .model_card import write_model_card
from .reader import Draft, PromptBuilder, Question, Reasoner, Source, Trace, choose_judge, pad_token_id


@dataclass
class CompressedGenerateOutput(GenerateDecoderOnlyOutput):
    """transformers' generate output, plus one `Trace` per row of what the reasoner read and wrote."""

    trace: list[Trace] | None = None


@dataclass
class Answer:
    """What `answer(..., return_sources=True)` returns: the answer `text`; `found`, True when the answer was
    judged grounded in the notes (what it asserts is in the sentences quoted from the context), False when no
    answer written within the read budget was (then `text` is `PromptConfig.not_found`), None when no check
    was made (`PromptConfig.not_found` None, e.g. MemAgent mode: the answer is generated whatever the notes
    hold); `sources`, the sentences of the context the notes were taken from, each with its document and
    character offsets; and the `trace` of the reading (`trace.attempts`: every answer written and the judge's
    verdict on it)."""

    text: str
    found: bool | None
    sources: list[Source]
    trace: Trace


class CompressedMemoryModel:
    """Wraps a causal LM: `generate(..., context=long_text)` answers over contexts of any length.

    `CompressedMemoryModel(model, tokenizer, memory_config=..., ...)`: every argument after the tokenizer is
    given by keyword. Attributes the wrapper does not define (`config`, `device`, `dtype`, ...) are the base
    model's; `to`, `cuda`, `cpu`, `half`, `bfloat16`, `float`, `train` and `eval` act as a module's do (on the
    base model and the wrapper's own trained parts) and return the wrapper.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        memory_config: MemoryConfig | None = None,
        base_name: str | None = None,
        show_progress: bool = True,
        gate_head: GateHead | None = None,
        compressor: Compressor | None = None,
        reasoner_adapter: ReasonerAdapter | None = None,
    ) -> None:
        check_placement(model)
        config = memory_config or MemoryConfig()
        if not isinstance(config, MemoryConfig):
            raise ConfigError(f"The configuration must be a MemoryConfig, got {type(config).__name__}.")
        check_sliding_window(model, config)
        check_read_fits(model, config)
        self.model = model
        self.tokenizer = tokenizer
        self.memory_config = config
        self.show_progress = show_progress
        self.base_name: str = base_name or model.config.name_or_path or ""
        self.fingerprint = fingerprint_model(model, tokenizer, self.base_name)
        self.prompts = PromptBuilder(tokenizer, config.prompts, config.notes, config.query_tokens)
        self.gate_head = gate_head
        self.gate_layers = self._gate_layers()
        self.compressor = self._compressor(compressor)
        self.reasoner_adapter = reasoner_adapter
        self.builder = BankBuilder(
            model,
            self.prompts.section_prefix_ids(),
            config.chunking.size,
            self.fingerprint,
            config.compression,
            self.compressor,
            self._bank_layers(),
            values=config.reading.mode == "compressed",
        )
        gate = build_gate(config.gate, tokenizer, self.gate_layers, gate_head)
        self.reasoner = Reasoner(model, self.prompts, config.reading, config.notes, gate, config.gate, reasoner_adapter)

    @classmethod
    def from_pretrained(
        cls,
        base: str,
        checkpoint: str | Path | None = None,
        config: MemoryConfig | None = None,
        *,
        revision: str | None = None,
        base_revision: str | None = None,
        show_progress: bool = True,
        memory: str | Path | None = None,
        **hf_kwargs: Any,
    ) -> CompressedMemoryModel:
        """Load `base` (Hub id or folder) with transformers, plus a compressmem `checkpoint`.

        `checkpoint` is a folder written by `save_pretrained` or a Hub repo id (downloaded once, then
        read from the Hub cache, offline too). `base` may itself be a checkpoint (folder or Hub repo):
        the base model it was made for is then read from it. `revision` is the checkpoint's branch,
        tag or commit when there is one on the Hub, else the base model's; `base_revision` pins the base
        model's beside a checkpoint's. `hf_kwargs` (`torch_dtype`, `device_map`, `quantization_config`,
        `attn_implementation`, `trust_remote_code`, `token`, `cache_dir`, ...) go to transformers
        untouched; `token`, `cache_dir` and `local_files_only` also fetch the checkpoint. `config`
        overrides the checkpoint's `MemoryConfig`; with neither, the training-free defaults are used.
        `memory=` is the release-0.1 name of `checkpoint=` (deprecated).
        """
        checkpoint = _renamed("memory", memory, "checkpoint", checkpoint, "from_pretrained")
        hub_kwargs = {k: hf_kwargs[k] for k in ("token", "cache_dir", "local_files_only") if k in hf_kwargs}
        source = resolve_model_source(base)
        if checkpoint is None and is_lychee_source(source, revision, **hub_kwargs):
            return _load_lychee(source, revision, config, show_progress, hf_kwargs)
        saved: Checkpoint | None
        if checkpoint is not None:
            saved = fetch_checkpoint(checkpoint, revision, **hub_kwargs)
        else:
            saved = find_checkpoint(source, revision, **hub_kwargs)
            if saved is not None:
                base = saved.fingerprint.name
                source = resolve_model_source(base)
        if saved is not None and (saved.directory / POINTER_FILE).is_file():  # a checkpoint over LycheeMemory's
            return _load_lychee(saved.directory, None, config, show_progress, hf_kwargs)
        if saved is None or saved.repo_id is None:
            base_revision = base_revision or revision
        if base_revision is not None:
            hf_kwargs["revision"] = base_revision
        model, tokenizer = _load_base(source, hf_kwargs)
        if saved is None:
            return cls(model, tokenizer, memory_config=config, base_name=base, show_progress=show_progress)
        saved.check_base(fingerprint_model(model, tokenizer, base))
        chosen = config or saved.config
        compressor = adapter = None
        if (
            chosen.compression is not None
            and chosen.compression.method == "learned"
            and saved.compressor_folder is not None
        ):
            ratio = DEFAULT_RATIO if chosen.compression.ratio is None else chosen.compression.ratio
            compressor = LearnedCompressor.load(model, saved.compressor_folder, ratio)
        if saved.reasoner_folder is not None:
            adapter = ReasonerAdapter.load(model, saved.reasoner_folder)
        return cls(
            model,
            tokenizer,
            memory_config=chosen,
            base_name=base,
            show_progress=show_progress,
            gate_head=saved.gate_head,
            compressor=compressor,
            reasoner_adapter=adapter,
        )

    def with_config(self, memory_config: MemoryConfig, show_progress: bool | None = None) -> CompressedMemoryModel:
        """The same base model (no reload, no copy) under another `MemoryConfig`, e.g. to compare modes."""
        show = self.show_progress if show_progress is None else show_progress
        compressor = self.compressor
        learned = (
            compressor
            if _method(memory_config) == "learned" and isinstance(compressor, (LearnedCompressor, LycheeCompressor))
            else None
        )
        return type(self)(
            self.model,
            self.tokenizer,
            memory_config=memory_config,
            base_name=self.base_name,
            show_progress=show,
            gate_head=self.gate_head,
            compressor=learned,
            reasoner_adapter=self.reasoner_adapter,
        )

    def __getattr__(self, name: str) -> Any:
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def to(self, *args: Any, **kwargs: Any) -> CompressedMemoryModel:
        """Move and/or cast the base model as `torch.nn.Module.to` does (`"cuda"`, `torch.bfloat16`, ...), and
        move the gate head and the learned compressor's memory embeddings to its device; returns the wrapper.

        The wrapper's own trained parts stay in float32 whatever the base model's dtype (they are a few
        thousand weights, cast where they are used). Banks stay where they are: their blocks move to the
        model's device one at a time as they are read.
        """
        self.model.to(*args, **kwargs)
        return self._follow_model()

    def cuda(self, device: int | torch.device | None = None) -> CompressedMemoryModel:
        """The wrapper with the base model (and its own parts) on a GPU, as `torch.nn.Module.cuda`."""
        # transformers wraps PreTrainedModel.cuda with functools.wraps, which typeshed types as an unbound call
        self.model.cuda(device)  # type: ignore[arg-type]
        return self._follow_model()

    def cpu(self) -> CompressedMemoryModel:
        """The wrapper with the base model (and its own parts) on the CPU."""
        self.model.cpu()
        return self._follow_model()

    def half(self) -> CompressedMemoryModel:
        """The wrapper with the base model in float16 (see `to`)."""
        self.model.half()
        return self._follow_model()

    def bfloat16(self) -> CompressedMemoryModel:
        """The wrapper with the base model in bfloat16 (see `to`)."""
        self.model.bfloat16()
        return self._follow_model()

    def train(self, mode: bool = True) -> CompressedMemoryModel:
        """The wrapper with the base model and the gate head in training mode (`mode=False`: evaluation)."""
        self.model.train(mode)
        if self.gate_head is not None:
            self.gate_head.train(mode)
        return self

    def eval(self) -> CompressedMemoryModel:
        """The wrapper with the base model and the gate head in evaluation mode (dropout off)."""
        return self.train(False)

    def _follow_model(self) -> CompressedMemoryModel:
        """Put the gate head and the learned compressor's memory embeddings on the base model's device (the
        embeddings' in place, so an optimizer holding them keeps them)."""
        device = input_embedding_weight(self.model).device
        if self.gate_head is not None:
            self.gate_head.to(device)
        if isinstance(self.compressor, LearnedCompressor):
            embeddings = self.compressor.memory_embeddings
            moved = embeddings.data.to(device)
            try:
                embeddings.data = moved
            except RuntimeError:  # a device whose tensors cannot stand in for another's (meta): a new parameter
                self.compressor.memory_embeddings = torch.nn.Parameter(moved, requires_grad=embeddings.requires_grad)
        return self

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
        if isinstance(self.compressor, LycheeCompressor):  # only what compressmem adds, and a pointer to theirs
            from .lychee import save_lychee  # lychee.py builds on this module

            save_lychee(self, directory, evaluation)
            return
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

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload compressmem checkpoint",
        evaluation: Mapping[str, float | str] | None = None,
    ) -> str:
        """Save the checkpoint (as `save_pretrained`) and upload it to the Hub model repo `repo_id` as one
        commit, creating the repo (and the branch `revision`) when missing; returns the commit's URL."""
        return upload_checkpoint(
            lambda folder: self._save_checkpoint(folder, repo_id, evaluation),
            repo_id,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
        )

    def compress(
        self,
        context: Context,
        *,
        bank_device: torch.device | str | None = None,
        batch_size: int = 4,
        show_progress: bool | None = None,
    ) -> MemoryBank:
        """Chunk `context` token-exactly and compress the chunks, `batch_size` at a time, into a `MemoryBank`.

        The bank can answer any number of questions; `bank_device="cpu"` keeps it off the GPU (blocks
        then move to the model's device one at a time while reading). For contexts too large for
        memory, use `compress_stream`, which keeps the bank on disk.
        """
        chunks = split_into_chunks(tokenize_context(context, self.tokenizer), self.memory_config.chunking.size)
        device = self.model.device if bank_device is None else torch.device(bank_device)
        return self.builder.bank(chunks, device, batch_size, self._show(show_progress))

    def compress_stream(
        self,
        pieces: Iterable[str],
        directory: str | Path,
        *,
        show_progress: bool | None = None,
        shard_blocks: int = 256,
        batch_size: int = 4,
        processes: Processes = ONE_PROCESS,
    ) -> MemoryBank:
        """Compress text that arrives in pieces (e.g. `text_pieces(path)`) into a bank folder on disk.

        Blocks are written shard by shard (`shard_blocks` blocks each) as they are made, so memory stays
        flat however long the text is; the returned bank reads its blocks back from `directory` one at a
        time, and the gate's index is built now and kept in the folder, so no question rebuilds it.
        Pieces are tokenized one by one: cut them before a space (as `text_pieces` does) to keep the
        tokens identical to tokenizing the whole text. To share the work among the processes of
        `accelerate launch`, call `compressmem.distributed.compress_distributed` in each instead.

        A folder left by an interrupted call (shards, no index) is resumed, skipping the chunks already written,
        once the text given is proven the same (the written blocks' tokens, and a text that does not end before
        them) and the settings are (model, chunk size, compression, bits, group, layers, section prefix: the
        folder records them); otherwise `BankMismatchError` names what differs.
        Text that is only whitespace is refused as `compress` refuses it; a stream refused for its text (not
        text, not UTF-8, empty) leaves the folder as it found it, not an interrupted compression.
        """
        check_pieces(pieces)  # before the folder is made
        directory = Path(directory)
        prefix_ids = self.builder.prefix_ids
        settings = stream_settings(self.builder.provenance(), prefix_ids, decode_text(self.tokenizer, prefix_ids))
        before = set(directory.iterdir()) if directory.is_dir() else None
        try:
            check_stream_settings(directory, settings, record=processes.rank == 0)
            processes.barrier()
            bank = compress_into_folder(
                self.builder,
                self.tokenizer,
                _with_text(pieces),
                directory,
                processes,
                show_progress=self._show(show_progress),
                shard_blocks=shard_blocks,
                batch_size=batch_size,
            )
        except ValueError as error:  # what was given is refused (the text, a setting): not a compression to resume
            _remove_new(directory, before, text_refused=isinstance(error, (ContextError, UnicodeDecodeError)))
            raise
        if processes.rank == 0:
            self.prepare(bank)
        processes.barrier()
        return bank

    def prepare(self, bank: MemoryBank) -> None:
        """Check that `bank` fits this configuration and build the gate's index of it (kept with the bank), so
        that the next question starts reading at once."""
        bank.check(self.bank_needs())
        if self.reasoner.gate is not None:
            self.reasoner.gate.index(bank, self.model)

    def bank_needs(self) -> BankNeeds:
        """What this configuration reads from a bank (checked against every bank before it is read)."""
        gate = self.memory_config.gate
        layers = self.gate_layers if gate is not None and gate.reads_keys else ()
        return self.builder.needs(
            layers, self.memory_config.reading.mode == "compressed", tuple(self.memory_config.kv_users)
        )

    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        context: Context | list[Context] | None = None,
        bank: MemoryBank | list[MemoryBank] | None = None,
        notes_kwargs: dict[str, Any] | None = None,
        memory: MemoryBank | list[MemoryBank] | None = None,
        **generation_kwargs: Any,
    ) -> torch.Tensor | GenerateOutput:
        """transformers' `generate()`, reading `context` (or a precomputed `bank`) first.

        Returns what transformers returns: prompt ids followed by new ids, or, with
        `return_dict_in_generate=True`, an output whose `.sequences` are those and whose `.trace`
        holds, per row, the gate scores, the blocks read and the notes after each step.
        `generation_kwargs` apply to the answer; `notes_kwargs` (e.g. `do_sample`, `temperature`,
        `min_new_tokens`) to the reads that write the notes, which are otherwise greedy.
        Without `context`/`bank` this is exactly the base model's `generate()`, unless the prompt
        is longer than `direct_max_tokens`: then each row's last user turn (or its last
        `query_tokens` tokens) is the question and the rest of the prompt the context.
        `memory=` is the release-0.1 name of `bank=` (deprecated).
        """
        bank = _renamed("memory", memory, "bank", bank, "generate")
        input_ids = generation_kwargs.pop("inputs", input_ids)
        _check_prompt(input_ids, attention_mask, len(self.tokenizer))
        _check_lengths(generation_kwargs)
        if context is not None and bank is not None:
            raise ValueError("Pass either context= (text or ids to compress now) or bank= (a MemoryBank), not both.")
        rows = _unpadded_rows(input_ids, attention_mask)
        if context is None and bank is None:
            if input_ids.shape[1] <= self._direct_max_tokens():
                with adapter_active(self.model, None):  # the base model alone, whatever another thread is reading
                    return generation_model(self.model).generate(
                        input_ids=input_ids, attention_mask=attention_mask, **generation_kwargs
                    )
            splits = [self.prompts.split_long_prompt(row) for row in rows]
            questions = [question for _, question in splits]
            banks = [self.compress(text) for text, _ in splits]
        else:
            questions = [self.prompts.find_question(row) for row in rows]
            if any(not q.text.strip() for q in questions):
                raise ValueError("The prompt's question is empty (its last user turn holds no text): ask a question.")
            banks = self._banks_for_rows(len(rows), context, bank)
        return self.answer_from_banks(input_ids, questions, banks, generation_kwargs, notes_kwargs)

    @overload
    def answer(
        self,
        question: str,
        context: Context | None = None,
        bank: MemoryBank | None = None,
        memory: MemoryBank | None = None,
        return_sources: Literal[False] = False,
        **generation_kwargs: Any,
    ) -> str: ...

    @overload
    def answer(
        self,
        question: str,
        context: Context | None = None,
        bank: MemoryBank | None = None,
        memory: MemoryBank | None = None,
        *,
        return_sources: Literal[True],
        **generation_kwargs: Any,
    ) -> Answer: ...

    @overload
    def answer(
        self,
        question: str,
        context: Context | None = None,
        bank: MemoryBank | None = None,
        memory: MemoryBank | None = None,
        return_sources: bool = False,
        **generation_kwargs: Any,
    ) -> str | Answer: ...

    def answer(
        self,
        question: str,
        context: Context | None = None,
        bank: MemoryBank | None = None,
        memory: MemoryBank | None = None,
        return_sources: bool = False,
        **generation_kwargs: Any,
    ) -> str | Answer:
        """Ask one question in plain text, with the chat template applied for you; returns the answer text, or,
        with `return_sources`, an `Answer` (text, whether it was found, the sentences it came from, the trace).
        When the context does not answer the question the text is `PromptConfig.not_found`.
        `memory=` is the release-0.1 name of `bank=` (deprecated)."""
        bank = _renamed("memory", memory, "bank", bank, "answer")
        ids = self.prompt_ids(question)
        generation_kwargs.setdefault("max_new_tokens", 128)
        generation_kwargs.setdefault("do_sample", False)
        generation_kwargs["return_dict_in_generate"] = True
        out = self.generate(ids.to(self.model.device), context=context, bank=bank, **generation_kwargs)
        if not isinstance(out, GenerateDecoderOnlyOutput):
            raise TypeError(f"generate gave a {type(out).__name__} where a dict output was asked for.")
        text = decode_text(self.tokenizer, out.sequences[0, ids.shape[1] :], skip_special_tokens=True).strip()
        if not return_sources:
            return text
        trace = read_output(out)[1][0]
        return Answer(text, trace.found, trace.sources if trace.found else [], trace)

    def prompt_ids(self, question: str) -> torch.Tensor:
        """`[1, n]` prompt ids for a plain-text user turn: the chat template when the tokenizer has one."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string.")
        if self.tokenizer.chat_template:
            return chat_ids(self.tokenizer, [{"role": "user", "content": question}])
        return text_ids(self.tokenizer, question)

    def answer_from_banks(
        self,
        input_ids: torch.Tensor,
        questions: list[Question],
        banks: list[MemoryBank],
        generation_kwargs: dict[str, Any],
        notes_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor | CompressedGenerateOutput:
        """`generate()`'s work once each row has its question and its bank: read, then answer.

        `generation_kwargs` apply to the answer; `notes_kwargs` (e.g. `do_sample`, `temperature`) to the
        reads, which are otherwise greedy. A row whose notes do not answer its question (`Trace.found`
        False) gets the configured not-found text and no generated answer (unless `PromptConfig.not_found`
        is None); per-token fields of a dict output (`scores`, `logits`, ...) are then left out, since not
        every row has them.
        """
        return self._read_and_answer(input_ids, questions, banks, generation_kwargs, notes_kwargs, rollouts=False)

    def _read_and_answer(
        self,
        input_ids: torch.Tensor,
        questions: list[Question],
        banks: list[MemoryBank],
        generation_kwargs: dict[str, Any],
        notes_kwargs: dict[str, Any] | None,
        rollouts: bool,
    ) -> torch.Tensor | CompressedGenerateOutput:
        """`answer_from_banks`; for `rollouts` (reinforcement learning: `sample_training_rollouts`), the traces
        also record the log-probability of every token the reads wrote, no read uses kept KV, and every row
        is answered (the reward judges it)."""
        needs = self.bank_needs()
        for bank in {id(b): b for b in banks}.values():
            if not isinstance(bank, MemoryBank):
                raise ValueError(
                    f"bank must be a MemoryBank (from compress() or MemoryBank.load), got {type(bank).__name__}."
                )
            bank.check(needs)
        if rollouts or self.memory_config.prompts.not_found is None:  # every row answered from its notes, unjudged
            traces = self.reasoner.run([q.text for q in questions], banks, self.show_progress, notes_kwargs, rollouts)
            prompts = [self.prompts.answer_ids(question, trace.notes) for question, trace in zip(questions, traces)]
            for trace, prompt in zip(traces, prompts):
                trace.answer_prompt_ids = prompt.tolist()
            out, generated = self._generate_answers(prompts, generation_kwargs)
            fields = {key: value for key, value in out.items() if key != "sequences"} if isinstance(out, dict) else {}
        else:
            self._choose_judge()

            def write(rows: list[int], notes: list[str]) -> list[Draft]:
                prompts = [self.prompts.answer_ids(questions[row], text) for row, text in zip(rows, notes)]
                new = self._generate_answers(prompts, dict(generation_kwargs))[1]
                return [
                    Draft(prompt, ids, decode_text(self.tokenizer, ids, skip_special_tokens=True).strip())
                    for prompt, ids in zip(prompts, new)
                ]

            traces = self.reasoner.run(
                [q.text for q in questions], banks, self.show_progress, notes_kwargs, rollouts, answer=write
            )
            generated = [self._given_ids(trace) for trace in traces]
            fields = {}
        new = _right_padded(generated, pad_token_id(self.tokenizer))
        sequences = torch.cat([input_ids, new.to(input_ids.device)], dim=1)
        if not generation_kwargs.get("return_dict_in_generate"):
            return sequences
        # transformers annotates `sequences` as torch.LongTensor, a legacy type that torch.cat's result is not typed as
        return CompressedGenerateOutput(sequences=cast(torch.LongTensor, sequences), trace=traces, **fields)

    def _generate_answers(
        self, prompts: list[torch.Tensor], generation_kwargs: dict[str, Any]
    ) -> tuple[Any, list[torch.Tensor]]:
        """The base model's `generate()` over the answer prompts, left-padded into one batch: its output, and each
        row's new tokens."""
        width = max(p.numel() for p in prompts)
        pad_id = pad_token_id(self.tokenizer)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - prompt.numel() :] = prompt
            mask[row, width - prompt.numel() :] = 1
        generation_kwargs.setdefault("pad_token_id", pad_id)
        with self.reasoner.active():
            out = generation_model(self.model).generate(
                input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device), **generation_kwargs
            )
        sequences = out.sequences if hasattr(out, "sequences") else out
        return out, list(sequences[:, width:].cpu())

    def _choose_judge(self) -> None:
        """Give the reasoner the judge `reading.judge` names, once (`auto` calibrates the model first)."""
        if self.reasoner.judge is None:
            kind = self.memory_config.reading.judge
            with self.reasoner.active():
                self.reasoner.judge, self.reasoner.judge_reason = choose_judge(kind, self.model, self.tokenizer)

    def _given_ids(self, trace: Trace) -> torch.Tensor:
        """The tokens answered for a judged row: its grounded answer's, else its quote's (`quote_template`), else
        the not-found text's, each of the last two followed by end of sequence."""
        if trace.answer_ids is not None:
            return torch.tensor(trace.answer_ids, dtype=torch.long)
        prompts = self.memory_config.prompts
        text = prompts.quote_template.format(quote=trace.quote) if trace.quote is not None else prompts.not_found
        if text is None:
            raise RuntimeError("prompts.not_found is None, so every row is answered unjudged: nothing is given.")
        ids = self.prompts.encode(text)
        eos = self.tokenizer.eos_token_id
        return ids if eos is None else torch.cat([ids, torch.tensor([eos])])

    def _banks_for_rows(self, batch: int, context: Any, bank: Any) -> list[MemoryBank]:
        """One bank per row: a per-row list when its length is the batch size (and batch > 1), else shared."""
        if bank is not None:
            banks = list(bank) if isinstance(bank, (list, tuple)) else [bank] * batch
            if len(banks) != batch or not all(isinstance(b, MemoryBank) for b in banks):
                raise ValueError(f"bank must be one MemoryBank or a list of {batch} banks (one per row).")
            return banks
        if batch > 1 and isinstance(context, (list, tuple)) and len(context) == batch:
            return [self.compress(row_context) for row_context in context]
        return [self.compress(context)] * batch

    def _gate_layers(self) -> tuple[int, ...]:
        """The layers whose keys the gate reads: the trained head's own for the head gate, the configuration's for
        the attention gate (else the default for this model); for other gates, a carried head's or the default."""
        text = self.model.config.get_text_config()
        gate = self.memory_config.gate
        if self.gate_head is not None:
            self.gate_head.check_model(self.model)
        if gate is not None and gate.kind == "attention" and gate.layers:
            if any(not 0 <= i < text.num_hidden_layers for i in gate.layers):
                raise ConfigError(
                    f"gate.layers {list(gate.layers)} must lie in 0..{text.num_hidden_layers - 1} for this model."
                )
            return tuple(gate.layers)
        if self.gate_head is not None and (gate is None or gate.kind != "attention"):
            return self.gate_head.layers
        return default_gate_layers(text.num_hidden_layers, getattr(text, "layer_types", None))

    def _compressor(self, learned: Compressor | None) -> Compressor | None:
        """The compressor the configuration names: None when nothing reads KV, the given learned one, or a
        training-free one."""
        compression = self.memory_config.compression
        if learned is not None and _method(self.memory_config) != "learned":
            raise ConfigError(
                f"A learned compressor was given but the configuration asks for compression "
                f"{_method(self.memory_config)!r}; use CompressionConfig('learned', ratio=...)."
            )
        if compression is None:
            return None
        if learned is None:
            return build_compressor(compression)
        if learned.ratio != compression.ratio:
            raise ConfigError(
                f"The learned compressor keeps one entry per {learned.ratio:g} tokens, but the "
                f"configuration asks for ratio {compression.ratio:g}; use the compressor's ratio."
            )
        return learned

    def _bank_layers(self) -> tuple[int, ...]:
        """The layers whose keys (and values) a bank keeps: all of them to read compressed, else the gate's."""
        if self.memory_config.reading.mode == "compressed":
            return tuple(range(self.model.config.get_text_config().num_hidden_layers))
        gate = self.memory_config.gate
        return tuple(self.gate_layers) if gate is not None and gate.reads_keys else ()

    def _direct_max_tokens(self) -> int:
        if self.memory_config.direct_max_tokens is not None:
            return self.memory_config.direct_max_tokens
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None) or 2**31

    def _show(self, show_progress: bool | None) -> bool:
        return self.show_progress if show_progress is None else show_progress

    def float(self) -> CompressedMemoryModel:  # last in the class: the name shadows the builtin in its body
        """The wrapper with the base model in float32 (see `to`)."""
        self.model.float()
        return self._follow_model()


def _load_lychee(
    source: str | Path, revision: str | None, config: MemoryConfig | None, show_progress: bool, hf_kwargs: dict
) -> CompressedMemoryModel:
    """`from_pretrained` of a LycheeMemory checkpoint, or of a compressmem checkpoint pointing at one."""
    from .lychee import load_lychee  # lychee.py builds on this module

    return load_lychee(source, revision, config, show_progress=show_progress, **hf_kwargs)


def sample_training_rollouts(
    model: CompressedMemoryModel,
    input_ids: torch.Tensor,
    questions: list[Question],
    banks: list[MemoryBank],
    generation_kwargs: dict[str, Any],
    notes_kwargs: dict[str, Any],
) -> CompressedGenerateOutput:
    """For trainers (`compressmem.training`'s GRPO), not for answering: `model.answer_from_banks`, with every
    row answered (the reward judges it, found or not), every read pre-filled rather than read from kept KV (the
    loss scores reads as they were made), and each written token's log-probability in the traces.
    `generation_kwargs` must ask for a dict output (`return_dict_in_generate=True`)."""
    out = model._read_and_answer(input_ids, questions, banks, generation_kwargs, notes_kwargs, rollouts=True)
    if not isinstance(out, CompressedGenerateOutput):
        raise ValueError("sample_training_rollouts needs generation_kwargs with return_dict_in_generate=True.")
    return out


def read_output(out: object) -> tuple[torch.Tensor, list[Trace]]:
    """The sequences and per-row traces of `out`, the output of a `generate()` that read a context or bank with
    `return_dict_in_generate=True`; refused when it is not one (ids only, or the base model's own output: nothing
    was read)."""
    if not isinstance(out, CompressedGenerateOutput) or out.trace is None:
        raise ValueError(
            "This output holds no traces of reading: generate() gives them only with return_dict_in_generate=True "
            "and a context or bank to read."
        )
    return out.sequences, out.trace


def _right_padded(rows: list[torch.Tensor], pad_id: int) -> torch.Tensor:
    """`[len(rows), longest]`: each row's ids, right-padded with `pad_id`."""
    longest = max(ids.numel() for ids in rows)
    new = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    for row, ids in enumerate(rows):
        new[row, : ids.numel()] = ids
    return new


def _method(config: MemoryConfig) -> str | None:
    return None if config.compression is None else config.compression.method


def _renamed(old: str, old_value: Any, new: str, new_value: Any, where: str) -> Any:
    """`new_value`, or `old_value` with a `DeprecationWarning` when only the release-0.1 keyword `old` was used."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ValueError(f"{where}() got both {old}= and {new}=; pass {new}= only ({old}= is its old name).")
    warnings.warn(
        f"{where}({old}=...) is deprecated and will be removed in the next release; use {new}=... instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value


def _with_text(pieces: Iterable[str]) -> Iterator[str]:
    """`pieces`, refused at their end by `compress`'s rule when none holds anything but whitespace."""
    seen = False
    for piece in pieces:
        seen = seen or (isinstance(piece, str) and bool(piece.strip()))
        yield piece
    if not seen:
        raise ContextError("The streamed context is empty or only whitespace; there is nothing to read.")


def _remove_new(directory: Path, before: set[Path] | None, text_refused: bool) -> None:
    """Undo what a refused stream wrote, so no interrupted compression is left behind to resume: the folder when
    it made it, else the files it added (its shards, its settings). Shards are kept when what was refused is not
    the text (a setting found wrong after blocks were written): they are then the start of the same text."""
    added = set(directory.iterdir()) - (before or set()) if directory.is_dir() else set()
    if not text_refused and any(path.name.startswith("blocks-") for path in added):
        return
    if before is None:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for path in added:
        path.unlink(missing_ok=True)


def _load_base(source: str, hf_kwargs: dict[str, Any]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model (in eval mode) and its tokenizer from `source` (an id or folder), through transformers."""
    model = AutoModelForCausalLM.from_pretrained(source, **hf_kwargs)
    tokenizer_kwargs = {
        k: hf_kwargs[k]
        for k in ("trust_remote_code", "revision", "token", "cache_dir", "local_files_only")
        if k in hf_kwargs
    }
    tokenizer = AutoTokenizer.from_pretrained(source, **tokenizer_kwargs)
    return model.eval(), tokenizer


def _check_prompt(input_ids: Any, attention_mask: Any, vocabulary: int) -> None:
    """Refuse a prompt that is not token ids of this tokenizer, or that holds no token to answer."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a [batch, length] tensor of token ids, as for transformers' generate().")
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}.")
    if input_ids.shape[1] == 0:
        raise ValueError("The prompt is empty: pass the question's token ids (e.g. from the chat template).")
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocabulary:
        raise ValueError(
            f"input_ids holds ids outside this tokenizer's 0..{vocabulary - 1}: pass ids from the "
            "model's own tokenizer."
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}."
        )
    if attention_mask is not None and not bool(attention_mask.bool().any(dim=1).all()):
        raise ValueError(
            "A row's attention_mask is all zeros, so that row has no prompt: give every row at least "
            "one token to attend to."
        )


def _check_lengths(generation_kwargs: dict[str, Any]) -> None:
    """Refuse answer lengths `generate()` could not honour before any block is read, not after."""
    for name, least in (("max_new_tokens", 1), ("min_new_tokens", 0), ("max_length", 1)):
        value = generation_kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")


def _unpadded_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    if attention_mask is None:
        return [row.cpu() for row in input_ids]
    return [row[mask.bool()].cpu() for row, mask in zip(input_ids, attention_mask)]
