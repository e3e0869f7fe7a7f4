import pytest
import torch

from compressmem import (
    ChunkingConfig,
    CompressedGenerateOutput,
    CompressedMemoryModel,
    CompressionConfig,
    ConfigError,
    GateConfig,
    MemoryConfig,
    NotesConfig,
    PromptConfig,
    ReadingConfig,
    Trace,
)
from compressmem.compressors import LearnedCompressor
from compressmem.gate import GateHead

from .conftest import ARCHS, tiny_model, tiny_wrapper

NOTES = NotesConfig(note_tokens=4)
GUESS = PromptConfig(not_found=None)  # these tests check generation itself: an answer is generated from any notes


def _chat(tokenizer, question):
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_without_context_generate_is_the_base_models(arch, tokenizer):
    wrapper = tiny_wrapper(arch, tokenizer)
    inputs = _chat(tokenizer, "Hello there, how are you?")
    ours = wrapper.generate(**inputs, max_new_tokens=8, do_sample=False)
    theirs = wrapper.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours, theirs)


@pytest.mark.slow
def test_without_context_generate_is_the_base_models_smollm2(smollm2):
    inputs = _chat(smollm2.tokenizer, "Name a colour.")
    ours = smollm2.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert torch.equal(ours, smollm2.model.generate(**inputs, max_new_tokens=12, do_sample=False))


def test_attributes_fall_through_to_the_base_model(tokenizer):
    wrapper = tiny_wrapper("llama", tokenizer)
    assert wrapper.config is wrapper.model.config
    assert wrapper.device == wrapper.model.device and wrapper.dtype == wrapper.model.dtype
    with pytest.raises(AttributeError):
        getattr(wrapper, "no_such_attribute")


PARTS = MemoryConfig(chunking=ChunkingConfig(48), compression=CompressionConfig("learned", ratio=4),
                     gate=GateConfig("head", top_k=2), reading=ReadingConfig("compressed"), notes=NOTES, prompts=GUESS)


def _with_own_parts(tokenizer) -> CompressedMemoryModel:
    """A wrapper with every part of its own a device move concerns: a gate head and a learned compressor."""
    model = tiny_model("llama", tokenizer)
    compressor = LearnedCompressor.initialise(model, 4, 48, seed=0)
    return CompressedMemoryModel(model, tokenizer, memory_config=PARTS, show_progress=False,
                                 gate_head=GateHead((1, 2), 4), compressor=compressor)


def test_module_methods_convert_the_base_model_and_its_parts_and_return_the_wrapper(tokenizer, essay_text):
    wrapper = _with_own_parts(tokenizer)

    def dtypes() -> set[torch.dtype]:
        return {weight.dtype for weight in wrapper.model.parameters()}

    assert wrapper.to(torch.bfloat16) is wrapper and dtypes() == {torch.bfloat16}
    own = (wrapper.gate_head.weight, wrapper.compressor.memory_embeddings)
    assert all(weight.dtype == torch.float32 for weight in own)  # the wrapper's own parts stay float32, cast at use
    out = wrapper.generate(wrapper.prompt_ids("What is this about?"), context=essay_text[:600], max_new_tokens=2,
                           return_dict_in_generate=True)
    assert out.trace[0].blocks_read  # the bfloat16 model compresses, gates (its float32 head) and reads
    assert wrapper.half() is wrapper and dtypes() == {torch.float16}
    assert wrapper.float() is wrapper and dtypes() == {torch.float32}
    assert wrapper.bfloat16() is wrapper and dtypes() == {torch.bfloat16}
    assert wrapper.to(dtype=torch.float32) is wrapper and dtypes() == {torch.float32}
    assert wrapper.train() is wrapper and wrapper.model.training and wrapper.gate_head.training
    assert wrapper.eval() is wrapper and not wrapper.model.training and not wrapper.gate_head.training
    assert wrapper.cpu() is wrapper and wrapper.to("cpu") is wrapper and wrapper.device.type == "cpu"
    assert wrapper.to("meta") is wrapper  # a device move without a GPU: the wrapper's parts follow the model
    assert {weight.device.type for weight in wrapper.model.parameters()} == {"meta"}
    assert wrapper.gate_head.weight.device.type == wrapper.compressor.memory_embeddings.device.type == "meta"


def test_the_constructor_takes_its_options_by_keyword_and_answer_from_banks_no_training_option(tokenizer):
    with pytest.raises(TypeError):
        CompressedMemoryModel(tiny_model("llama", tokenizer), tokenizer, MemoryConfig(chunking=ChunkingConfig(64)))
    wrapper = tiny_wrapper("llama", tokenizer, MemoryConfig(chunking=ChunkingConfig(64), notes=NOTES))
    ids = wrapper.prompt_ids("Which town?")
    bank = wrapper.compress("The ferry leaves the river town at noon. " * 12)
    question = wrapper.prompts.find_question(ids[0])
    with pytest.raises(TypeError, match="logprobs"):
        wrapper.answer_from_banks(ids, [question], [bank], {"max_new_tokens": 2}, logprobs=True)


@pytest.mark.parametrize("read, gate", [("raw", "attention"), ("compressed", "attention"), ("raw", "lexical")])
def test_generate_with_context_returns_prompt_then_new_ids_and_a_trace(tokenizer, essay_text, read, gate):
    keys = gate == "attention"
    config = MemoryConfig(chunking=ChunkingConfig(64), reading=ReadingConfig(read),
                          compression=CompressionConfig() if keys or read == "compressed" else None,
                          gate=GateConfig(gate, top_k=2, layers=(1, 2) if keys else None),
                          notes=NotesConfig(note_tokens=8), prompts=GUESS)
    wrapper = tiny_wrapper("llama", tokenizer, config)
    inputs = _chat(tokenizer, "What is this about?")
    out = wrapper.generate(**inputs, context=essay_text[:1500], max_new_tokens=5, min_new_tokens=5,
                           do_sample=False, return_dict_in_generate=True)
    assert isinstance(out, CompressedGenerateOutput)
    prompt_len = inputs["input_ids"].shape[1]
    assert out.sequences.shape == (1, prompt_len + 5)
    assert torch.equal(out.sequences[0, :prompt_len], inputs["input_ids"][0])
    trace = out.trace[0]
    assert isinstance(trace, Trace) and trace.num_blocks > 2
    assert 1 <= len(trace.blocks_read) and len(set(trace.blocks_read)) == len(trace.blocks_read)
    for step in trace.steps:
        assert len(step.gate_scores) == trace.num_blocks
        assert abs(sum(step.gate_scores) - 1) < 1e-4
        ranked = sorted(range(trace.num_blocks), key=lambda b: -step.gate_scores[b])
        assert step.block in ranked[:2]


@pytest.mark.parametrize("arch", ARCHS)
def test_the_default_answers_over_a_context_on_every_architecture(arch, tokenizer, essay_text):
    wrapper = tiny_wrapper(arch, tokenizer, MemoryConfig(chunking=ChunkingConfig(64), notes=NOTES, prompts=GUESS))
    inputs = _chat(tokenizer, "What is this about?")
    out = wrapper.generate(**inputs, context=essay_text[:1500], max_new_tokens=3, min_new_tokens=3,
                           return_dict_in_generate=True)
    assert out.sequences.shape == (1, inputs["input_ids"].shape[1] + 3)
    assert 1 <= len(out.trace[0].blocks_read) <= wrapper.memory_config.gate.top_k  # until the notes answer, at most


def test_sliding_window_layers_read_raw_and_refuse_compressed_reading_wider_than_their_window(tokenizer, essay_text):
    """Gemma-3 with a 16-token window, shorter than a chunk: raw reading re-reads each chunk with the model itself
    (right for any layer); compressed reading is refused with what to do; the attention gate reads full layers."""
    narrow = dict(sliding_window=16)
    raw = tiny_wrapper("gemma3", tokenizer, MemoryConfig(chunking=ChunkingConfig(64), notes=NOTES), **narrow)
    out = raw.generate(**_chat(tokenizer, "What is this about?"), context=essay_text[:1500], max_new_tokens=2,
                       return_dict_in_generate=True)
    assert out.trace[0].blocks_read
    compressed = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("none"), gate=None,
                              reading=ReadingConfig("compressed"))
    with pytest.raises(ConfigError, match="sliding-window layers see only the last 16 tokens.*reading mode 'raw'"):
        tiny_wrapper("gemma3", tokenizer, compressed, **narrow)
    keyed = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("select"),
                         gate=GateConfig("attention", top_k=2), notes=NOTES)
    gated = tiny_wrapper("gemma3", tokenizer, keyed, **narrow)
    assert gated.gate_layers == (3,)  # of layers 2 and 3 (half to three quarters deep), the full one
    trace = gated.generate(**_chat(tokenizer, "Why?"), context=essay_text[:1500], max_new_tokens=2,
                           return_dict_in_generate=True).trace[0]
    assert len(trace.blocks_read) == 2


def test_memagent_mode_reads_every_block_in_order(tokenizer, essay_text):
    wrapper = tiny_wrapper("qwen2", tokenizer, MemoryConfig.memagent(128, notes=NOTES))
    inputs = _chat(tokenizer, "What is this about?")
    out = wrapper.generate(**inputs, context=essay_text[:2000], max_new_tokens=3, return_dict_in_generate=True)
    trace = out.trace[0]
    assert trace.blocks_read == list(range(trace.num_blocks))
    assert all(step.gate_scores is None for step in trace.steps)


def test_max_steps_bounds_the_reads(tokenizer, essay_text):
    config = MemoryConfig.memagent(64, reading=ReadingConfig(max_steps=2), notes=NOTES)
    wrapper = tiny_wrapper("llama", tokenizer, config)
    out = wrapper.generate(**_chat(tokenizer, "Why?"), context=essay_text[:2000], max_new_tokens=2,
                           return_dict_in_generate=True)
    assert out.trace[0].blocks_read == [0, 1]


def test_batches_take_one_context_per_row_or_one_shared(tokenizer, essay_text):
    wrapper = tiny_wrapper("llama", tokenizer, MemoryConfig.memagent(128, notes=NOTES, prompts=GUESS))
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
               for q in ("Short?", "A much longer question about the essay?")]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    assert inputs["attention_mask"][0, 0] == 0  # left-padded, without changing the shared tokenizer
    contexts = [essay_text[:700], essay_text[5000:7000]]
    out = wrapper.generate(**inputs, context=contexts, max_new_tokens=4, min_new_tokens=4,
                           return_dict_in_generate=True)
    assert out.sequences.shape == (2, inputs["input_ids"].shape[1] + 4)
    assert [t.num_blocks for t in out.trace] == [len(wrapper.compress(c)) for c in contexts]
    assert out.trace[1].question == "A much longer question about the essay?"
    shared = wrapper.generate(**inputs, context=essay_text[:700], max_new_tokens=4, return_dict_in_generate=True)
    assert [t.num_blocks for t in shared.trace] == [out.trace[0].num_blocks] * 2


def test_over_long_prompt_becomes_context_and_question(tokenizer, essay_text):
    config = MemoryConfig.memagent(128, direct_max_tokens=200, notes=NOTES)
    wrapper = tiny_wrapper("llama", tokenizer, config)
    question = "What does the author think?"
    message = essay_text[:3000] + "\n\n" + question
    inputs = _chat(tokenizer, message)
    out = wrapper.generate(**inputs, max_new_tokens=3, return_dict_in_generate=True)
    trace = out.trace[0]
    assert trace.question.endswith(question) and len(tokenizer(trace.question)["input_ids"]) <= config.query_tokens
    assert trace.num_blocks >= 4
    assert out.sequences.shape[1] == inputs["input_ids"].shape[1] + 3


def test_bad_calls_get_clear_errors(tokenizer, essay_text, tmp_path):
    wrapper = tiny_wrapper("llama", tokenizer)
    ids = tokenizer("Question?", return_tensors="pt")["input_ids"]
    bank = wrapper.compress(essay_text[:500])
    with pytest.raises(ValueError, match="not both"):
        wrapper.generate(ids, context="text", bank=bank)
    with pytest.raises(ValueError, match="integer token ids"):
        wrapper.generate(ids.float(), context="text")
    with pytest.raises(ValueError, match="empty"):
        wrapper.generate(ids, context="   ")
    with pytest.raises(ValueError, match="str"):
        wrapper.generate(ids, context=b"bytes")
    with pytest.raises(ValueError, match="MemoryBank"):
        wrapper.generate(ids, bank="not a bank")
    with pytest.raises(ValueError, match="question"):
        wrapper.answer("", context="text")
    with pytest.raises(ValueError, match="prompt is empty"):
        wrapper.generate(ids[:, :0], context="text")
    with pytest.raises(ValueError, match="all zeros"):
        wrapper.generate(ids, attention_mask=torch.zeros_like(ids), context="text")
    with pytest.raises(ValueError, match="outside this tokenizer"):
        wrapper.generate(torch.tensor([[5, len(tokenizer)]]), context="text")
    with pytest.raises(ValueError, match="question is empty"):
        wrapper.generate(torch.tensor([[tokenizer.eos_token_id]]), context="text")
    for name, value in (("max_new_tokens", 0), ("max_new_tokens", -1), ("min_new_tokens", -2), ("max_length", 2.5)):
        with pytest.raises(ValueError, match=f"{name} must be an integer"):
            wrapper.answer("What?", context="text", **{name: value})
    with pytest.raises(ValueError, match="iterable of text pieces"):
        wrapper.compress_stream("one string", tmp_path / "bank")
    assert not (tmp_path / "bank").exists(), "nothing is written for a refused stream"
    with pytest.raises(ConfigError, match="A read needs up to .*4096-token window"):
        tiny_wrapper("llama", tokenizer, MemoryConfig(notes=NotesConfig(note_tokens=10**6)))
    with pytest.raises(ConfigError, match="notes of up to 1000000000.*NotesConfig\\(max_tokens"):
        tiny_wrapper("llama", tokenizer, MemoryConfig(notes=NotesConfig(max_tokens=10**9)))
    tiny_wrapper("llama", tokenizer, MemoryConfig(notes=NotesConfig(max_tokens=4096 - 512 - 48 - 160)))  # fits


@pytest.mark.slow
def test_answer_is_generate_under_the_chat_template(smollm2, essay_text):
    """Unjudged (not_found None), so that every row's answer is generated and the two prompts' answers compare."""
    smollm2 = smollm2.with_config(smollm2.memory_config.replace(prompts=PromptConfig(not_found=None)))
    context = essay_text[:3000]
    question = "What do hard liquor and cigarettes have in common?"
    text = smollm2.answer(question, context=context, max_new_tokens=24)
    inputs = _chat(smollm2.tokenizer, question)
    out = smollm2.generate(**inputs, context=context, max_new_tokens=24, do_sample=False)
    assert text == smollm2.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    plain = smollm2.tokenizer(question, return_tensors="pt")["input_ids"]  # the same question without the template
    untemplated = smollm2.generate(plain, context=context, max_new_tokens=24, do_sample=False)
    assert text != smollm2.tokenizer.decode(untemplated[0, plain.shape[1]:], skip_special_tokens=True).strip()


def test_a_question_the_context_cannot_answer_gets_the_not_found_text_and_no_generation(tokenizer, essay_text):
    """The lexical gate knows the bank's words: a question naming a name it never holds is not found unread."""
    config = MemoryConfig(chunking=ChunkingConfig(64), gate=GateConfig("lexical"), notes=NOTES)
    wrapper = tiny_wrapper("llama", tokenizer, config)
    inputs = _chat(tokenizer, "Where was Zanzibar Quillfeather born?")
    out = wrapper.generate(**inputs, context=essay_text[:1500], max_new_tokens=5, return_dict_in_generate=True)
    trace = out.trace[0]
    assert trace.missing_terms == ["quillfeather", "zanzibar"] and trace.blocks_read == []
    assert trace.found is False and trace.answer_prompt_ids is None and out.scores is None
    new = out.sequences[0, inputs["input_ids"].shape[1]:]
    assert tokenizer.decode(new, skip_special_tokens=True) == config.prompts.not_found
    assert new[-1] == tokenizer.eos_token_id
    answer = wrapper.answer("Where was Zanzibar Quillfeather born?", context=essay_text[:1500], return_sources=True)
    assert answer.text == config.prompts.not_found and not answer.found and answer.sources == []
