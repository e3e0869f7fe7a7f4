"""The evaluation runner: every (task, length, case, mode), one JSON line each, then a report.

Modes, all on the same loaded base model:
- `default`: the model's own `MemoryConfig` (or checkpoint), gate and all;
- `memagent`: the MemAgent baseline (`MemoryConfig.memagent()`): every raw chunk of MemAgent's 5000 tokens read
  in order into a rewritten memory with MemAgent's prompts, the answer always generated; its answer is scored
  as MemAgent's evaluation scores it, on the text after "the answer is" (`memagent_prediction`);
- `oracle`: the default pipeline with a perfect gate that reads exactly the evidence blocks, so
  the gap to `default` is the cost of gate errors;
- `full`: the base model's plain `generate()` over the whole context, skipped (with a note)
  where the prompt exceeds the model's window.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import MEMAGENT_ANSWER_MARKER, MemoryConfig
from ..errors import ContextError
from ..hf.generation import generate_ids
from ..hf.tokens import decode_text
from ..model import CompressedMemoryModel, read_output
from ..reader import pad_token_id
from .cases import EvalCase
from .measure import PeakMemory, available_bytes
from .scoring import score_answer
from .tasks import iter_cases, make_cases

MODES = ("default", "memagent", "oracle", "full")
FULL_PROMPT = "{context}\n\n{question}"
# Peak memory of one case per token of its context: making it (the haystack cut by the tokenizer, about 880
# bytes a token with SmolLM2's), compressing it and indexing it (about 420 more), measured at 512K tokens
# (benchmarks/RESULTS.md), rounded up. Cases are made one at a time, so this is what the longest length needs.
EVAL_BYTES_PER_TOKEN = 1400
_WARM_UP_TEXT = "The harbour town kept its records in a stone archive by the quay. " * 40


def run_eval(
    model: CompressedMemoryModel,
    tasks: Iterable[str],
    lengths: Iterable[int],
    n: int,
    modes: Iterable[str] = ("default", "memagent"),
    seed: int = 0,
    out_dir: str | Path | None = None,
    *,
    max_new_tokens: int = 48,
    haystack: str | Path | None = None,
    hotpotqa_file: str | Path | None = None,
    memagent: MemoryConfig | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every mode on `n` seeded cases per (task, length); returns the per-case records.

    `memagent` is the baseline's configuration (default `MemoryConfig.memagent()`, MemAgent's 5000-token
    chunks, 1024-token memory and prompts). Each mode first answers one short warm-up case, unrecorded, so
    one-time allocations do not land in the first case's peak memory. With `out_dir`, records are appended to
    `out_dir/cases.jsonl` as they finish, so an interrupted run keeps what it did. A record's `prediction` is
    what is scored, its `response` the answer as generated (they differ in MemAgent mode only).
    """
    modes = list(modes)
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"Unknown modes {unknown}; the modes are {list(MODES)}.")
    lengths = list(lengths)
    check_memory(max(lengths, default=0))
    memagent = memagent or MemoryConfig.memagent()
    runners = _mode_runners(model, modes, max_new_tokens, memagent)
    warm_up_length = 2 * max(model.memory_config.chunking.size, memagent.chunking.size)
    warm_up = make_cases("niah_single", model.tokenizer, warm_up_length, 1, seed=-1, haystack=_WARM_UP_TEXT)[0]
    for mode in modes:
        runners[mode](warm_up)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    records = []
    jobs = [(task, length) for task in tasks for length in lengths]
    bar = tqdm(total=len(jobs) * n * len(modes), desc="Evaluating", unit="run", disable=not show_progress)
    with ExitStack() as closing, bar:
        sink = (
            closing.enter_context(open(Path(out_dir) / "cases.jsonl", "w", encoding="utf-8"))
            if out_dir is not None
            else None
        )
        for task, length in jobs:
            cases = iter_cases(task, model.tokenizer, length, n, seed, haystack=haystack, hotpotqa_file=hotpotqa_file)
            for case in cases:
                for mode in modes:
                    record = {"mode": mode, **case.to_dict(), **runners[mode](case)}
                    if not record["skipped"]:
                        record.update(
                            score_answer(
                                case.task,
                                record["prediction"],
                                case.answers,
                                context=case.context,
                                distractors=case.metadata.get("distractor_values", ()),
                            )
                        )
                    records.append(record)
                    if sink is not None:
                        sink.write(json.dumps(record) + "\n")
                        sink.flush()
                    bar.update()
    return records


def check_memory(length: int, available: int | None = None) -> None:
    """Refuse a length whose case would not fit in the memory the machine has (`available` bytes, default: what
    it has now), before any case is made: a case of 500M tokens would otherwise allocate until it is killed."""
    available = available_bytes() if available is None else available
    need = length * EVAL_BYTES_PER_TOKEN
    if available is not None and need > available:
        fits = available // EVAL_BYTES_PER_TOKEN
        raise ContextError(
            f"A case of {length:,} tokens needs about {need / 2**30:.1f} GiB while it is made, compressed and "
            f"indexed (about {EVAL_BYTES_PER_TOKEN} bytes a token), and this machine has {available / 2**30:.1f} "
            f"GiB available: use lengths up to about {fits // 2**20}m ({fits:,} tokens)."
        )


def _mode_runners(model: CompressedMemoryModel, modes: list[str], max_new_tokens: int, memagent: MemoryConfig) -> dict:
    config = model.memory_config
    wrappers = {
        "default": model.with_config(config, show_progress=False),
        "memagent": model.with_config(memagent, show_progress=False),
        "oracle": model.with_config(config.ungated(), show_progress=False),
    }
    return {
        "default": lambda case: _run_memory(wrappers["default"], case, max_new_tokens, oracle=False),
        "memagent": lambda case: _run_memory(
            wrappers["memagent"], case, max_new_tokens, oracle=False, read_answer=memagent_prediction
        ),
        "oracle": lambda case: _run_memory(wrappers["oracle"], case, max_new_tokens, oracle=True),
        "full": lambda case: _run_full(model, case, max_new_tokens),
    }


def memagent_prediction(response: str) -> str:
    """The answer MemAgent's evaluation scores in a response to its answer prompt: the text after the last "the
    answer is" (asterisks dropped, then spaces and full stops stripped). A response without the phrase is scored
    whole, where MemAgent's evaluation scores no answer: a small model that ignores the format is not counted
    wrong for that alone."""
    cleaned = response.replace("*", "")
    if MEMAGENT_ANSWER_MARKER not in cleaned:
        return response.strip()
    return cleaned.rsplit(MEMAGENT_ANSWER_MARKER, 1)[-1].strip().strip(".").strip()


def _run_memory(
    model: CompressedMemoryModel,
    case: EvalCase,
    max_new_tokens: int,
    oracle: bool,
    read_answer: Callable[[str], str] = str.strip,
) -> dict[str, Any]:
    """One case answered from memory; `read_answer` turns the generated answer into the prediction scored (the
    answer itself is kept as `response`)."""
    if oracle and not case.evidence:
        return {
            "prediction": "",
            "response": "",
            "context_tokens": None,
            "blocks": None,
            "blocks_read": None,
            "evidence_blocks": None,
            "evidence_recall": None,
            "seconds": None,
            "compress_seconds": 0.0,
            "peak_mib": None,
            "peak_increase_mib": None,
            "found": None,
            "skipped": True,
            "note": "no evidence to read: a perfect gate reads nothing",
        }
    prompt = model.prompt_ids(case.question).to(model.model.device)
    with PeakMemory(model.model.device) as peak:
        start = time.perf_counter()
        bank = model.compress(case.context)
        compress_seconds = time.perf_counter() - start
        evidence = bank.blocks_overlapping(list(case.evidence))
        readable = bank.subset(evidence) if oracle else bank
        out = model.generate(
            prompt, bank=readable, max_new_tokens=max_new_tokens, do_sample=False, return_dict_in_generate=True
        )
        seconds = time.perf_counter() - start
    sequences, traces = read_output(out)
    trace = traces[0]
    read = [evidence[b] for b in trace.blocks_read] if oracle else trace.blocks_read
    response = decode_text(model.tokenizer, sequences[0, prompt.shape[1] :], skip_special_tokens=True).strip()
    return {
        "prediction": read_answer(response),
        "response": response,
        "context_tokens": bank.num_tokens,
        "blocks": len(bank),
        "blocks_read": read,
        "evidence_blocks": evidence,
        "evidence_recall": len(set(read) & set(evidence)) / len(evidence) if evidence else None,
        "seconds": seconds,
        "compress_seconds": compress_seconds,
        **_memory_fields(peak),
        "found": trace.found,
        "skipped": False,
    }


def full_prompt_ids(model: CompressedMemoryModel, context: str, question: str) -> torch.Tensor:
    """The `full` mode's prompt: the whole context, then the question, in one chat turn."""
    return model.prompt_ids(FULL_PROMPT.format(context=context, question=question))


def _run_full(model: CompressedMemoryModel, case: EvalCase, max_new_tokens: int) -> dict[str, Any]:
    prompt = full_prompt_ids(model, case.context, case.question)
    window = getattr(model.model.config.get_text_config(), "max_position_embeddings", None)
    base = {
        "context_tokens": prompt.shape[1],
        "blocks": None,
        "blocks_read": None,
        "evidence_blocks": None,
        "evidence_recall": None,
        "compress_seconds": 0.0,
    }
    if window is not None and prompt.shape[1] + max_new_tokens > window:
        return {
            **base,
            "prediction": "",
            "response": "",
            "seconds": None,
            "peak_mib": None,
            "peak_increase_mib": None,
            "skipped": True,
            "note": f"{prompt.shape[1]}-token prompt exceeds the model's {window}-token window",
        }
    prompt = prompt.to(model.model.device)
    with PeakMemory(model.model.device) as peak, torch.no_grad():
        start = time.perf_counter()
        out = generate_ids(
            model.model,
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_token_id(model.tokenizer),
        )
        seconds = time.perf_counter() - start
    prediction = decode_text(model.tokenizer, out[0, prompt.shape[1] :], skip_special_tokens=True).strip()
    return {
        **base,
        "prediction": prediction,
        "response": prediction,
        "seconds": seconds,
        **_memory_fields(peak),
        "skipped": False,
    }


def _memory_fields(peak: PeakMemory) -> dict[str, float]:
    return {"peak_mib": peak.peak_bytes / 2**20, "peak_increase_mib": peak.increase_bytes / 2**20}
