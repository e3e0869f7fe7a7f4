"""One model, several threads: each answer is the one it gets alone (no state of one call leaks into another)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from compressmem import (
    ChunkingConfig,
    CompressedMemoryModel,
    CompressionConfig,
    GateConfig,
    MemoryConfig,
    NotesConfig,
    ReadingConfig,
)
from compressmem.compressors import LearnedCompressor
from compressmem.hf.compat import attention_implementation
from compressmem.training.grpo import with_reasoner_adapter

from .conftest import tiny_model, tiny_wrapper

NOTES = NotesConfig(note_tokens=6)
KEYED = MemoryConfig(chunking=ChunkingConfig(48), compression=CompressionConfig("select", ratio=2, score="observed"),
                     gate=GateConfig("attention", top_k=2, layers=(1, 2)), reading=ReadingConfig("compressed"),
                     notes=NOTES)
LEARNED = KEYED.replace(compression=CompressionConfig("learned", ratio=4))


def _with_adapters(tokenizer) -> CompressedMemoryModel:
    """A learned compressor and a reasoner adapter, both nonzero: each pass must run under its own adapter."""
    model = tiny_model("llama", tokenizer)
    compressor = LearnedCompressor.initialise(model, 4, 48, seed=0)
    wrapper = with_reasoner_adapter(CompressedMemoryModel(model, tokenizer, memory_config=LEARNED, base_name="tiny",
                                                          show_progress=False, compressor=compressor), seed=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.05, generator=generator)
    return wrapper


@pytest.mark.parametrize("make", [lambda tok: tiny_wrapper("llama", tok, KEYED), _with_adapters],
                         ids=["attention-probe", "adapters"])
def test_threads_answering_on_one_model_get_the_answers_they_get_one_after_the_other(tokenizer, essay_text, make):
    model = make(tokenizer)
    jobs = [(essay_text[i * 700:i * 700 + 1400], question) for i, question in
            enumerate(["What is this about?", "Who is the author?", "Why does it matter?", "What is a startup?",
                       "Where does it happen?", "When was it written?"])]
    jobs += [(None, "Name a colour."), (None, "Name a river.")]

    def ask(job):
        context, question = job
        if context is None:  # the base model alone, while other threads read under the reasoner's adapter
            return model.generate(model.prompt_ids(question), max_new_tokens=5, do_sample=False).tolist()
        bank = model.compress(context)
        out = model.generate(model.prompt_ids(question), bank=bank, max_new_tokens=5, do_sample=False,
                             return_dict_in_generate=True)
        return out.sequences.tolist(), out.trace[0].blocks_read, [s.output_ids for s in out.trace[0].steps]

    alone = [ask(job) for job in jobs]
    implementation = attention_implementation(model.model)
    for _ in range(2):
        with ThreadPoolExecutor(len(jobs)) as pool:
            together = list(pool.map(ask, jobs))
        assert together == alone
    assert attention_implementation(model.model) == implementation  # the probe left the model as it found it
    ids = model.prompt_ids("Plain generate?")
    assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False),
                       model.model.generate(ids, max_new_tokens=4, do_sample=False))  # no adapter left on


RAW_KEPT = MemoryConfig(chunking=ChunkingConfig(48), gate=None, reading=ReadingConfig(keep_bits=8, until="all"),
                        notes=NOTES)


def test_two_models_answering_on_one_bank_from_threads_keep_their_own_kv_and_answer_as_one_after_the_other(
    tokenizer, essay_text
):
    """Two wrappers (same weights, two model objects: two owners of kept KV) share a bank from several threads,
    raw reading with kept KV: no read fails on the other's KV, neither clears the other's, and each answer is
    the one it gets alone."""
    first, second = tiny_wrapper("llama", tokenizer, RAW_KEPT), tiny_wrapper("llama", tokenizer, RAW_KEPT)
    bank = first.compress(essay_text[:900])
    questions = ["What is this about?", "Who is the author?", "Why does it matter?"]
    jobs = [(model, question) for question in questions for model in (first, second)]

    def ask(job):
        model, question = job
        out = model.generate(model.prompt_ids(question), bank=bank, max_new_tokens=4, do_sample=False,
                             return_dict_in_generate=True)
        steps = out.trace[0].steps
        return out.sequences.tolist(), [s.output_ids for s in steps], [s.reused for s in steps]

    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(ask, jobs))  # both models pre-fill every block and keep its KV at once: no read may fail
    alone = [ask(job) for job in jobs]
    assert all(reused == [True] * len(bank) for _, _, reused in alone)  # the two never cleared each other's KV
    assert bank.kept.owners == {first.reasoner.keeper, second.reasoner.keeper} and len(bank.kept) == 2 * len(bank)
    for _ in range(2):
        with ThreadPoolExecutor(len(jobs)) as pool:
            together = list(pool.map(ask, jobs))
        assert together == alone
