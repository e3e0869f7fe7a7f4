"""Training examples for the gate head: labelled gate decisions taken from real rollouts.

Examples come from the evaluation generators, whose cases locate their evidence (the needle, the
assignment chain, HotpotQA's supporting sentences): a block is positive when it overlaps evidence.
Each case gives several gate decisions, one per state of the notes: empty, then the notes after
each step of a real reasoner rollout over the evidence blocks in document order (the
states the gate meets mid-question, when the next hop must be found from what was read). Blocks
already read in a state are left out of its decision, as the reasoner never re-reads them.

Features are always collected with the lexical (BM25) feature as the last column, so one
collection serves heads with and without it (`GateExample.for_head`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import DEFAULT_SHARPNESS, MemoryConfig
from ..eval.cases import EvalCase
from ..gate import AttentionGate, GateHead, HeadGate
from ..gate.head import POOLS
from ..model import CompressedMemoryModel

logger = logging.getLogger("compressmem")


@dataclass
class GateExample:
    """One gate decision: every block's features for one (question, notes) state, its labels,
    and the training-free attention gate's scores for the same prompt (the baseline)."""

    case_id: str
    task: str
    step: int
    features: torch.Tensor  # [blocks, features of a head with the lexical feature]
    evidence: torch.Tensor  # [blocks] bool
    unread: torch.Tensor  # [blocks] bool
    attention_scores: torch.Tensor  # [blocks]

    def for_head(self, head: GateHead) -> torch.Tensor:
        """The features `head` reads: all of them, or all but the lexical column."""
        return self.features[:, : head.num_features]

    @property
    def lexical_scores(self) -> torch.Tensor:
        """The lexical gate's relative BM25 scores for the same prompt (a second baseline)."""
        return self.features[:, -1]


def collect_examples(
    model: CompressedMemoryModel, cases: list[EvalCase], show_progress: bool = True
) -> list[GateExample]:
    """Gate decisions of every case: compress, roll the reasoner over the evidence, featurise each state.

    `model` must use a configuration whose banks hold its gate layers' keys (`gate="attention"`).
    """
    heads = model.model.config.get_text_config().num_attention_heads
    gate = HeadGate(
        model.tokenizer, GateHead(model.gate_layers, heads, gate_sharpness(model.memory_config), lexical=True)
    )
    reader = model.with_config(model.memory_config.ungated(), show_progress=False)
    examples = []
    for case in tqdm(cases, desc="Gate examples", unit="case", disable=not show_progress):
        bank = model.compress(case.context, show_progress=False)
        evidence = bank.blocks_overlapping(list(case.evidence))
        if not evidence:
            logger.warning("Case %s has no evidence block; skipped.", case.case_id)
            continue
        trace = reader.reasoner.run([case.question], [bank.subset(evidence)], show_progress=False)[0]
        states = [""] + [step.notes for step in trace.steps]
        index = gate.index(bank, model.model)
        texts = [model.prompts.gate_text(case.question, notes) for notes in states]
        pooled = gate.attention.pooled_scores(model.model, texts, index.keys, POOLS)  # one prefill for both
        features = gate.features(model.model, texts, index, pooled).cpu()
        baseline = AttentionGate.mix(pooled[:, :, POOLS.index("mean")]).cpu()
        labels = torch.zeros(len(bank), dtype=torch.bool)
        labels[evidence] = True
        for step in range(len(states)):
            unread = torch.ones(len(bank), dtype=torch.bool)
            unread[evidence[:step]] = False
            examples.append(GateExample(case.case_id, case.task, step, features[step], labels, unread, baseline[step]))
    return examples


def cached_examples(
    model: CompressedMemoryModel, cases: list[EvalCase], path: Path, show_progress: bool = True
) -> list[GateExample]:
    """`collect_examples`, reusing `path` when it was written for the same model, settings and cases."""
    key = _cache_key(model, cases)
    if path.is_file():
        cached_key, examples = _load(path)
        if cached_key == key:
            return examples
        logger.info("%s was collected for other cases or settings; collecting again.", path)
    examples = collect_examples(model, cases, show_progress)
    _save(examples, path, key)
    return examples


def _cache_key(model: CompressedMemoryModel, cases: list[EvalCase]) -> str:
    config = model.memory_config
    return json.dumps(
        {
            "bank": model.builder.provenance().to_dict(),
            "layers": list(model.gate_layers),
            "sharpness": gate_sharpness(config),
            "gate_template": config.prompts.gate_template,
            "update_template": model.prompts.update_template,
            "cases": [c.case_id for c in cases],
        }
    )


def gate_sharpness(config: MemoryConfig) -> float:
    """The attention gate's sharpness in `config`, or the default one for configurations of other gates."""
    gate = config.gate
    if gate is None or gate.kind != "attention" or gate.sharpness is None:
        return DEFAULT_SHARPNESS
    return gate.sharpness


def _save(examples: list[GateExample], path: Path, key: str) -> None:
    """Safetensors, never pickle: tensors per example, identities and the cache key as metadata."""
    from safetensors.torch import save_file

    tensors, meta = {}, []
    for i, e in enumerate(examples):
        for name in ("features", "evidence", "unread", "attention_scores"):
            tensors[f"{i}.{name}"] = getattr(e, name).clone()  # examples of a case share storage
        meta.append([e.case_id, e.task, e.step])
    save_file(tensors, str(path), metadata={"examples": json.dumps(meta), "key": key})


def _load(path: Path) -> tuple[str, list[GateExample]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    meta = json.loads(metadata.get("examples", "[]"))
    return metadata.get("key", ""), [
        GateExample(
            case_id,
            task,
            step,
            tensors[f"{i}.features"],
            tensors[f"{i}.evidence"],
            tensors[f"{i}.unread"],
            tensors[f"{i}.attention_scores"],
        )
        for i, (case_id, task, step) in enumerate(meta)
    ]
