"""Gate training: the metrics on hand-computed cases, the fit on separable data, examples from rollouts,
and `compressmem train gate` end to end on a tiny model."""

import json

import pytest
import torch

from compressmem import (
    ChunkingConfig,
    CompressedMemoryModel,
    CompressionConfig,
    GateConfig,
    MemoryConfig,
    ReadingConfig,
)
from compressmem.eval import EvalCase
from compressmem.gate import GateHead
from compressmem.training import GateExample, collect_examples, evaluate_scores, train_head
from compressmem.training.gate import best_threshold, ranking_auc

from .conftest import tiny_model, tiny_wrapper


def _example(features, evidence, unread=None, task="t"):
    evidence = torch.tensor(evidence)
    unread = torch.ones_like(evidence) if unread is None else torch.tensor(unread)
    return GateExample("c", task, 0, torch.as_tensor(features, dtype=torch.float32), evidence, unread,
                       torch.zeros(len(evidence)))


def test_auc_top1_precision_recall_and_threshold_by_hand():
    assert ranking_auc(torch.tensor([0.9, 0.5, 0.7, 0.1]), torch.tensor([True, False, True, False])) == 1.0
    # positives 0.6 and 0.2 against negatives 0.6 (tie) and 0.4: wins 0.5 + 1 + 0 + 0 = 1.5 of 4
    assert ranking_auc(torch.tensor([0.6, 0.6, 0.2, 0.4]), torch.tensor([True, False, True, False])) == 0.375

    first = _example([[0.0]] * 4, [True, False, False, False], unread=[False, True, True, True])
    second = _example([[0.0]] * 3, [False, True, False])
    scores = [torch.tensor([0.99, 0.2, 0.7, 0.1]), torch.tensor([0.3, 0.6, 0.4])]
    metrics = evaluate_scores(scores, [first, second], threshold=0.5)
    # `first` has no unread evidence: it counts for neither AUC nor top-1; its 0.7 block is a false pass
    assert metrics.top1_precision == 1.0 and metrics.auc == 1.0
    assert metrics.precision == 0.5 and metrics.recall == 1.0
    assert metrics.extra["blocks_passed_per_decision"] == 1.0
    # scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): F1 is best (0.8) when passing down to 0.7
    assert best_threshold([torch.tensor([0.9, 0.8, 0.7, 0.1])], [_example([[0.0]] * 4, [True, False, True, False])]) \
        == pytest.approx(0.7)


def test_fit_separates_and_beats_the_baselines_on_held_out_examples():
    generator = torch.Generator().manual_seed(0)

    def examples(count):
        made = []
        for _ in range(count):
            labels = torch.zeros(12, dtype=torch.bool)
            labels[torch.randint(0, 12, (1,), generator=generator)] = True
            noise = torch.randn(12, 2 * 1 * 2 + 1, generator=generator)
            noise[:, 1] += 3.0 * labels  # one informative feature among five
            made.append(GateExample("c", "t", 0, noise, labels, torch.ones(12, dtype=torch.bool),
                                    torch.rand(12, generator=generator)))
        return made

    head = GateHead((0,), heads=2, lexical=True)
    report = train_head(head, examples(60), examples(30))
    assert report.losses[-1] < report.losses[0] * 0.6
    assert report.head.auc > 0.95 and report.head.top1_precision > 0.8
    assert report.attention.auc < 0.7  # random scores
    assert head.weight[1] == head.weight.abs().max()
    assert 0 < report.head.threshold < 1 and report.head.recall > 0.5


def test_examples_follow_a_rollout_over_the_evidence(tokenizer):
    model = tiny_wrapper("llama", tokenizer, MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig(),
                                                        gate=GateConfig("attention", layers=(1, 2))))
    filler = "The weather was mild and the market was busy that day. " * 30
    facts = ["VAR AAA = 12345.", "VAR BBB = VAR AAA."]
    context = facts[0] + " " + filler + facts[1] + " " + filler
    spans = tuple((context.index(f), context.index(f) + len(f)) for f in facts)
    case = EvalCase("variable_tracking", "vt-0", context, "Which variables equal 12345?", ("AAA BBB",), spans,
                    len(tokenizer(context)["input_ids"]), 0)
    examples = collect_examples(model, [case], show_progress=False)
    bank = model.compress(context)
    evidence = bank.blocks_overlapping(list(spans))
    assert len(evidence) == 2
    assert [e.step for e in examples] == [0, 1, 2]
    for step, example in enumerate(examples):
        assert example.features.shape == (len(bank), 2 * 2 * 4 + 1)
        assert example.evidence.nonzero().flatten().tolist() == evidence
        assert (~example.unread).nonzero().flatten().tolist() == evidence[:step]
        assert abs(float(example.attention_scores.sum()) - 1) < 1e-4


def test_train_gate_command_writes_a_checkpoint_that_loads(tokenizer, tmp_path):
    from compressmem.cli import main

    base = tmp_path / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    haystack = tmp_path / "haystack.txt"
    haystack.write_text("Essays talk about startups, cities, painting and the art of writing well. " * 400)
    out = tmp_path / "gate"
    args = ["train", "gate", "--model", str(base), "--chunk-size", "128", "--out", str(out), "--task",
            "niah_single", "--lengths", "512", "--n-train", "3", "--n-test", "2", "--haystack", str(haystack),
            "--max-steps", "3", "--quiet"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"head", "attention", "lexical", "losses"}
    assert metrics["train_decisions"] >= 3 * 2  # empty memory, then after each of the needle's blocks
    loaded = CompressedMemoryModel.from_pretrained(str(base), checkpoint=out, show_progress=False)
    config = loaded.memory_config
    assert config.gate.kind == "head" and config.reading == ReadingConfig(order="score", max_steps=3)
    assert config.chunking.size == 128 and config.compression == CompressionConfig("select", ratio=4)
    assert config.gate.threshold == pytest.approx(metrics["head"]["threshold"])
    assert loaded.gate_head.lexical
    cached = (out / "examples-train.safetensors").stat().st_mtime_ns
    assert main(args) == 0  # the examples are reused, not collected again
    assert (out / "examples-train.safetensors").stat().st_mtime_ns == cached
