import pytest
import torch

from compressmem import ChunkingConfig, GateConfig, MemoryConfig, ReadingConfig
from compressmem.gate import LexicalGate, gate_scores
from compressmem.hf.rope import Rotary

from .conftest import tiny_model, tiny_wrapper


def _naive_scores(queries, keys, offsets, scale, weights, pool="mean"):
    layers, heads, _, _ = queries.shape
    group = heads // keys.shape[1]
    out = torch.empty(len(offsets) - 1, layers, heads)
    for b in range(len(offsets) - 1):
        for layer in range(layers):
            for head in range(heads):
                block = keys[layer, head // group, offsets[b]:offsets[b + 1]]
                lse = (queries[layer, head] @ block.T * scale).logsumexp(-1)
                pooled = (lse * weights).sum() / weights.sum() if pool == "mean" else lse[weights > 0].max()
                out[b, layer, head] = pooled
    return out


@pytest.mark.parametrize("group", [1, 2, 4])
def test_gate_scores_match_a_naive_loop_on_ragged_blocks(group):
    torch.manual_seed(group)
    kv_heads, dim = 2, 16
    sizes = [1, 7, 3, 12, 1, 5]
    offsets = torch.tensor([0] + sizes).cumsum(0)
    queries = torch.randn(3, kv_heads * group, 5, dim)
    keys = torch.randn(3, kv_heads, int(offsets[-1]), dim)
    ones = torch.ones(5)
    expected = _naive_scores(queries, keys, offsets, dim ** -0.5, ones)
    torch.testing.assert_close(gate_scores(queries, keys, offsets), expected, atol=1e-5, rtol=1e-5)
    first = torch.tensor([1.0, 0, 0, 0, 0])
    masked = gate_scores(queries, keys, offsets, query_weights=first)
    torch.testing.assert_close(masked, _naive_scores(queries[:, :, :1], keys, offsets, dim ** -0.5, ones[:1]),
                               atol=1e-5, rtol=1e-5)
    weights = torch.rand(5)
    for pool in ("mean", "max"):
        torch.testing.assert_close(gate_scores(queries, keys, offsets, weights, scale=0.7, pool=pool),
                                   _naive_scores(queries, keys, offsets, 0.7, weights, pool), atol=1e-5, rtol=1e-5)


def test_gate_scores_reject_mismatched_heads():
    with pytest.raises(ValueError, match="multiple of KV heads"):
        gate_scores(torch.randn(1, 3, 2, 8), torch.randn(1, 2, 4, 8), torch.tensor([0, 4]))


def test_unrotate_undoes_rope(tokenizer):
    model = tiny_model("llama", tokenizer)
    rotary = Rotary.of(model)
    states = torch.randn(2, 5, 16)
    positions = torch.tensor([[3, 90, 7, 400, 1], [0, 2, 9, 11, 2000]])
    cos, sin = rotary.module(states, positions.reshape(1, -1))
    cos, sin = cos.reshape(2, 5, 16), sin.reshape(2, 5, 16)
    half = torch.cat([-states[..., 8:], states[..., :8]], dim=-1)
    rotated = states * cos + half * sin
    torch.testing.assert_close(rotary.unrotate(rotated, positions, layer=0), states, atol=1e-5, rtol=1e-5)


def test_lexical_gate_finds_the_block_sharing_rare_words(tokenizer):
    wrapper = tiny_wrapper("llama", tokenizer, MemoryConfig(chunking=ChunkingConfig(40)))
    filler = "The weather was mild and the town was quiet that year. " * 12
    context = filler + "The zephyrine lockbox holds the opal key. " + filler
    bank = wrapper.compress(context)
    gate = LexicalGate(tokenizer)
    scores = gate.score(wrapper.model, ["Where is the zephyrine lockbox?", "nothing matches xyzzy"],
                        gate.index(bank, wrapper.model))
    holder = next(i for i, b in enumerate(bank.blocks) if "zephyrine" in tokenizer.decode(b.token_ids))
    assert scores[0].argmax().item() == holder
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(scores[1], torch.full((len(bank),), 1 / len(bank)))


def test_recall_pass_reads_the_best_unread_block(tokenizer):
    """With top-2 passing, a scan that has moved past a passing block comes back to it in recall."""
    from compressmem.reader.loop import _Row
    from compressmem.reader.trace import ReadStep, Trace

    gate, reading = GateConfig(top_k=2), ReadingConfig(recall=True)
    row = _Row(bank=[None] * 4, trace=Trace("q", 4))
    scores = torch.tensor([0.1, 0.5, 0.1, 0.3])
    assert row.next_block(scores, gate, reading) == 1
    row.trace.steps.append(ReadStep(1, "", ""))
    shifted = torch.tensor([0.6, 0.05, 0.05, 0.3])
    assert row.next_block(shifted, gate, reading) == 3
    row.trace.steps.append(ReadStep(3, "", ""))
    assert row.next_block(shifted, gate, reading) == 0 and row.recalling
    row.trace.steps.append(ReadStep(0, "", ""))
    assert row.next_block(shifted, gate, reading) is None


def test_lexical_gate_is_bm25(tokenizer):
    """The packed inverted index gives the textbook BM25 scores, computed here block by block."""
    import math
    from collections import Counter

    from compressmem.gate.lexical import words

    wrapper = tiny_wrapper("llama", tokenizer, MemoryConfig(chunking=ChunkingConfig(24)))
    text = ("Amber rivers run to the cold sea. The sea keeps amber stones. Stones sink; rivers rise again. "
            "Cold winds bring rain to the amber hills, and the hills keep the rain for the rivers.")
    bank = wrapper.compress(text)
    question = "Where do amber rivers meet the cold sea?"
    gate = LexicalGate(tokenizer)
    scores = gate.score(wrapper.model, [question], gate.index(bank, wrapper.model))[0]
    counts = [Counter(words(tokenizer.decode(b.token_ids))) for b in bank.blocks]
    lengths = [sum(c.values()) for c in counts]
    average = sum(lengths) / len(lengths)
    expected = []
    for count, length in zip(counts, lengths):
        total = 0.0
        for term in set(words(question)):
            df = sum(term in c for c in counts)
            if count[term]:
                idf = math.log(1 + (len(counts) - df + 0.5) / (df + 0.5))
                total += idf * count[term] * 2.2 / (count[term] + 1.2 * (0.25 + 0.75 * length / average))
        expected.append(total)
    expected = torch.tensor(expected)
    torch.testing.assert_close(scores, expected / expected.sum())
