"""The trained gate head: features, probabilities, its file, checkpoints that carry it, and score-order reading."""

import pytest
import torch

from compressmem import (
    ChunkingConfig,
    CompressedMemoryModel,
    CompressionConfig,
    ConfigError,
    GateConfig,
    MemoryConfig,
    ReadingConfig,
)
from compressmem.gate import GateHead, GateHeadError, HeadGate
from compressmem.reader import Reasoner

from .conftest import tiny_model, tiny_wrapper

HEAD_CONFIG = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("select"),
                           gate=GateConfig("attention", layers=(1, 2)))
READ_BY_HEAD = HEAD_CONFIG.replace(gate=GateConfig("head"))
SECTIONS = ["The lighthouse keeper painted the door blue.", "Bakers rise before dawn to knead bread.",
            "The vault code is 4719283, said the keeper.", "Rivers carve canyons over many years."]


def _context() -> str:
    return " ".join(s + " Filler words follow here." * 12 for s in SECTIONS)


def test_head_features_are_centred_and_probabilities_follow_the_weights(tokenizer):
    model = tiny_wrapper("llama", tokenizer, HEAD_CONFIG)
    bank = model.compress(_context())
    head = GateHead((1, 2), heads=4, lexical=True)
    gate = HeadGate(tokenizer, head)
    index = gate.index(bank, model.model)
    features = gate.features(model.model, ["What is the vault code?", "Who paints doors?\nthe keeper"], index)
    assert features.shape == (2, len(bank), head.num_features)
    attention = features[..., :-1]
    assert attention.mean(dim=1).abs().max() < 1e-4  # centred over the bank
    assert attention.abs().sum() > 0
    lexical = features[..., -1]
    torch.testing.assert_close(lexical.mean(dim=1), torch.zeros(2), atol=1e-5, rtol=0)
    vault = bank.blocks_overlapping([(_context().index("4719283"), _context().index("4719283") + 7)])
    assert lexical[0].argmax().item() in vault

    with torch.no_grad():
        head.weight[-1] = 5.0  # only the lexical feature counts
        head.bias.fill_(-1.0)
    scores = gate.score(model.model, ["What is the vault code?"], index)[0]
    expected = torch.sigmoid(5.0 * lexical[0] - 1.0)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_head_file_round_trip_and_refusals(tokenizer, tmp_path):
    head = GateHead((1, 3), heads=4, sharpness=4.0, lexical=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.num_features))
        head.bias.fill_(0.25)
    head.save(tmp_path / "gate_head.safetensors")
    loaded = GateHead.load(tmp_path / "gate_head.safetensors")
    assert (loaded.layers, loaded.heads, loaded.sharpness, loaded.lexical) == ((1, 3), 4, 4.0, False)
    torch.testing.assert_close(loaded.weight, head.weight, rtol=0, atol=0)
    assert loaded.bias.item() == 0.25

    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(GateHeadError, match="not a compressmem gate head"):
        GateHead.load(tmp_path / "other.safetensors")
    with pytest.raises(GateHeadError, match="trained for another base model"):
        GateHead((1, 3), heads=9).check_model(tiny_model("llama", tokenizer))

    from safetensors import safe_open

    with safe_open(str(tmp_path / "gate_head.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    for name, tensors, message in (
            ("bias7", {"weight": head.weight.detach(), "bias": torch.zeros(7)}, r"bias has shape \(7,\)"),
            ("nan", {"weight": torch.full_like(head.weight.detach(), float("nan")), "bias": torch.zeros(1)}, "NaN"),
            ("nobias", {"weight": head.weight.detach()}, "bias has shape missing")):
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata=metadata)
        with pytest.raises(GateHeadError, match=message):
            GateHead.load(tmp_path / f"{name}.safetensors")
    weights = {"weight": head.weight.detach(), "bias": torch.zeros(1)}
    for name, changed, message in (
            ("negative-layer", {"layers": "[-1, 3]"}, r"layers \[-1, 3\]: distinct indices >= 0"),
            ("nan-sharpness", {"sharpness": "nan"}, "sharpness nan: from 0.01 to 1000"),
            ("negative-sharpness", {"sharpness": "-4"}, "sharpness -4.0: from 0.01 to 1000"),
            ("bad-layers", {"layers": "one"}, "settings .* are missing or malformed.*JSONDecodeError"),
            ("no-heads", {"heads": "0"}, "heads 0: >= 1")):
        save_file(weights, str(tmp_path / f"{name}.safetensors"), metadata={**metadata, **changed})
        with pytest.raises(GateHeadError, match=message):
            GateHead.load(tmp_path / f"{name}.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "gate_head.safetensors").read_bytes()[:-8])
    with pytest.raises(GateHeadError, match="cut.safetensors is not a readable safetensors file"):
        GateHead.load(tmp_path / "cut.safetensors")


def test_gate_head_config_needs_weights_and_matching_layers(tokenizer):
    config = READ_BY_HEAD
    with pytest.raises(GateHeadError, match="needs trained weights"):
        tiny_wrapper("llama", tokenizer, config)
    with pytest.raises(ConfigError, match="gate.layers applies to kind='attention' only.*brings its own"):
        GateConfig("head", layers=(0,))
    model = CompressedMemoryModel(tiny_model("llama", tokenizer), tokenizer, memory_config=config,
                                  gate_head=GateHead((2, 3), 4), show_progress=False)
    assert model.gate_layers == (2, 3)
    assert model.compress(_context()).layers == (2, 3)
    attention = model.with_config(HEAD_CONFIG.replace(gate=GateConfig("attention", layers=(0,))))
    assert attention.gate_layers == (0,)  # the attention gate reads its own layers, whatever head is carried


def test_checkpoint_carries_the_head_and_reads_with_it(tokenizer, tmp_path):
    base = tmp_path / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    head = GateHead((1, 2), heads=4, lexical=True)
    with torch.no_grad():
        head.weight.copy_(torch.linspace(-1, 1, head.num_features))
    config = READ_BY_HEAD.replace(gate=GateConfig("head", threshold=0.0, top_k=None),
                                  reading=ReadingConfig(order="score", max_steps=2, until="all"))
    plain = CompressedMemoryModel.from_pretrained(str(base), show_progress=False)
    model = CompressedMemoryModel(plain.model, tokenizer, memory_config=config, base_name=str(base), show_progress=False,
                                  gate_head=head)
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "gate_head.safetensors").is_file()

    loaded = CompressedMemoryModel.from_pretrained(str(base), checkpoint=tmp_path / "ckpt", show_progress=False)
    assert loaded.memory_config == config
    torch.testing.assert_close(loaded.gate_head.weight, head.weight, rtol=0, atol=0)
    question = "What is the vault code?"
    out = loaded.generate(loaded.prompt_ids(question), context=_context(), max_new_tokens=4,
                          return_dict_in_generate=True)
    trace = out.trace[0]
    assert len(trace.blocks_read) == 2  # threshold 0 passes every block; max_steps stops the reading
    first_scores = torch.tensor(trace.steps[0].gate_scores)
    assert trace.blocks_read[0] == int(first_scores.argmax())


class _ScriptedGate:
    """A gate whose scores at each call come from a script, to test the reading order alone."""

    def __init__(self, script: list[list[float]]) -> None:
        self.script = script
        self.calls = 0

    def index(self, bank, model):
        return None

    def score(self, model, texts, index):
        scores = torch.tensor([self.script[min(self.calls, len(self.script) - 1)]] * len(texts))
        self.calls += 1
        return scores


@pytest.mark.parametrize("order, expected", [("score", [2, 0]), ("document", [2])])
def test_score_order_returns_to_earlier_blocks_that_document_order_skips(tokenizer, order, expected):
    model = tiny_wrapper("llama", tokenizer, HEAD_CONFIG)
    bank = model.compress(_context())
    assert len(bank) >= 4
    blocks = len(bank)
    script = [[0.1, 0.2, 0.9, 0.3] + [0.0] * (blocks - 4),  # block 2 first
              [0.8, 0.1, 0.95, 0.2] + [0.0] * (blocks - 4),  # then block 0, behind the cursor
              [0.4, 0.1, 0.95, 0.2] + [0.0] * (blocks - 4)]  # nothing unread over the threshold: stop
    gate = GateConfig("attention", threshold=0.5, top_k=None, layers=(1, 2))
    reasoner = Reasoner(model.model, model.prompts, ReadingConfig(order=order, until="all"), model.memory_config.notes,
                        _ScriptedGate(script), gate)
    trace = reasoner.run(["What is the vault code?"], [bank], show_progress=False)[0]
    assert trace.blocks_read == expected


def test_score_order_configuration_is_checked():
    with pytest.raises(ConfigError, match="order='score'.*needs a gate"):
        MemoryConfig(gate=None, reading=ReadingConfig(order="score"))
    with pytest.raises(ConfigError, match="gate.kind must be one of"):
        GateConfig("learned")
    assert READ_BY_HEAD.replace(gate=GateConfig("head", threshold=0.5, top_k=None),
                                reading=ReadingConfig(order="score")).needs_kv


def test_score_order_reads_at_most_top_k_blocks_however_the_scores_move(tokenizer):
    model = tiny_wrapper("llama", tokenizer, HEAD_CONFIG)
    bank = model.compress(_context())
    rest = [0.0] * (len(bank) - 4)
    script = [[0.9, 0.8, 0.1, 0.1] + rest, [0.1, 0.1, 0.9, 0.8] + rest]  # the second ranking passes two new blocks
    reasoner = Reasoner(model.model, model.prompts, ReadingConfig(order="score", until="all"),
                        model.memory_config.notes, _ScriptedGate(script), GateConfig("attention", top_k=2))
    assert reasoner.run(["What is the vault code?"], [bank], show_progress=False)[0].blocks_read == [0, 2]


class _TwoPromptGate:
    """Scores blocks one way for the question alone and another for the question with notes."""

    def __init__(self, alone_text: str, alone: list[float], noted: list[float]) -> None:
        self.alone_text, self.alone, self.noted = alone_text, alone, noted

    def index(self, bank, model):
        return None

    def score(self, model, texts, index):
        return torch.tensor([self.alone if text == self.alone_text else self.noted for text in texts])


def test_score_order_keeps_the_question_alones_best_blocks_beside_the_notes_next_hop(tokenizer):
    """After the first note, a block ranks by the higher of its scores for the question alone and with the notes:
    the notes' hop (block 3) is read next, then the question's own second best (block 1), which the notes alone
    (block 2 next) and a mean of the two (block 2: 0.5 on both, against 0.4) would pass over."""
    model = tiny_wrapper("llama", tokenizer, HEAD_CONFIG)
    sections = ["The Reno vault stands by the harbour.", "The Reno vault was built of granite.",
                "The Reno vault has a blue door.", "The Reno vault code is 4719283."]
    bank = model.compress(" ".join(s + " Filler words follow here." * 12 for s in sections))
    assert len(bank) >= 4
    question = "What is the code of the Reno vault?"
    rest = [0.0] * (len(bank) - 4)
    gate = _TwoPromptGate(model.prompts.gate_text(question, ""), [0.9, 0.8, 0.5, 0.0] + rest,
                          [0.0, 0.0, 0.5, 0.95] + rest)
    reasoner = Reasoner(model.model, model.prompts, ReadingConfig(order="score", until="all"),
                        model.memory_config.notes, gate, GateConfig("attention", top_k=3))
    trace = reasoner.run([question], [bank], show_progress=False)[0]
    assert trace.steps[0].notes, "the first read noted the sentence naming the Reno vault"
    assert trace.blocks_read == [0, 3, 1]
