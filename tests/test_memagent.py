"""The MemAgent baseline behaves as MemAgent's agent: its chunks, prompts and rewritten memory, every chunk read,
and an answer always generated from the memory (never the not-found rule)."""

import argparse

import pytest
from transformers import AutoConfig

from compressmem import ConfigError, MemoryConfig, NotesConfig
from compressmem.cli.evaluate import add_parser as add_eval_parser
from compressmem.cli.options import add_model_options, memory_config
from compressmem.config import DEFAULT_NOT_FOUND
from compressmem.embedded import embedded_model_folder
from compressmem.eval.runner import memagent_prediction
from compressmem.reader.prompts import PromptBuilder

from .conftest import tiny_wrapper

# Phrases of MemAgent's prompts, as its repository writes them (github.com/BytedTsinghua-SIA/MemAgent,
# taskutils/memory_eval/utils/recurrent.py: TEMPLATE, TEMPLATE_FINAL, NO_MEMORY).
MEMAGENT_UPDATE_PHRASES = (
    "You are presented with a problem, a section of an article that may contain the answer to the problem, and a "
    "previous memory. Please read the provided section carefully and update the memory with the new information "
    "that helps to answer the problem. Be sure to retain all relevant details from the previous memory while adding "
    "any new, useful information.",
    "<problem> \n{question}\n</problem>",
    "<memory>\n{notes}\n</memory>",
    "<section>\n",
    "\n</section>",
    "Updated memory:\n",
)
MEMAGENT_ANSWER_PHRASES = (
    "You are presented with a problem and a previous memory. Please answer the problem based on the previous memory "
    'and format your response as follows "Therefore, the answer is (insert answer here)".',
    "<problem> \n{question}\n</problem>",
    "<memory>\n{notes}\n</memory>",
    "Your answer:\n",
)
ABSENT_QUESTION = "What is the secret code for the zygomorphic quokka vault?"


def test_memagent_rewrites_a_1024_token_memory_over_5000_token_chunks_and_never_refuses():
    config = MemoryConfig.memagent()
    assert config.chunking.size == 5000
    assert (config.notes.update, config.notes.max_tokens) == ("rewrite", 1024)
    assert (config.gate, config.compression, config.reading.mode) == (None, None, "raw")
    assert (config.reading.until, config.reading.max_steps, config.reading.keep_bits) == ("all", None, 0)
    assert config.prompts.not_found is None


def test_memagent_prompts_are_memagents_templates():
    prompts = MemoryConfig.memagent().prompts
    update = prompts.section_header + "{chunk}" + prompts.update_template
    for phrase in MEMAGENT_UPDATE_PHRASES:
        assert phrase in update
    # MemAgent's order but for the chunk, which comes first: instructions, section, problem, memory, "Updated memory"
    marks = ["You are presented", "<section>", "</section>", "<problem>", "<memory>", "Updated memory:"]
    assert [update.index(mark) for mark in marks] == sorted(update.index(mark) for mark in marks)
    for phrase in MEMAGENT_ANSWER_PHRASES:
        assert phrase in prompts.answer_template
    assert prompts.empty_notes == "No previous memory"


def test_memagent_reads_fit_smollm2s_window_and_are_refused_by_a_smaller_one(tokenizer):
    window = AutoConfig.from_pretrained(embedded_model_folder()).max_position_embeddings
    assert window == 8192
    tiny_wrapper("llama", tokenizer, MemoryConfig.memagent(), max_position_embeddings=window)
    with pytest.raises(ConfigError, match="A read needs up to 7208 tokens"):
        tiny_wrapper("llama", tokenizer, MemoryConfig.memagent(), max_position_embeddings=4096)


def test_the_rendered_update_prompt_is_memagents_with_the_chunk_first(tokenizer):
    config = MemoryConfig.memagent()
    prompts = PromptBuilder(tokenizer, config.prompts, config.notes)
    head = tokenizer.decode(prompts.section_prefix_ids())
    update = tokenizer.decode(prompts.update_ids("Where was Mara born?", ""))
    assert head.endswith("any new, useful information.\n\n<section>\n")
    assert update.startswith(
        "\n</section>\n\n<problem> \nWhere was Mara born?\n</problem>\n\n<memory>\nNo previous memory\n</memory>\n\n"
        "Updated memory:\n"
    )


def test_memagent_answers_from_its_memory_even_when_the_notes_lack_the_questions_words(tokenizer):
    """The default configuration refuses this question (its key terms are nowhere in the context); MemAgent
    reads every chunk into its memory and always generates an answer from it, without judging it found."""
    context = "The lighthouse keeper kept a log of every ship that passed the northern cape. " * 12
    small_memory = MemoryConfig.memagent(64, notes=NotesConfig("rewrite", max_tokens=8))  # quick on a random model
    model = tiny_wrapper("llama", tokenizer, small_memory)
    answer = model.answer(ABSENT_QUESTION, context=context, return_sources=True, max_new_tokens=4)
    trace = answer.trace
    assert trace.blocks_read == list(range(trace.num_blocks)) and trace.num_blocks > 1
    assert all(step.notes == step.output[: len(step.notes)] for step in trace.steps)  # the memory is rewritten
    assert trace.answer_prompt_ids is not None and "Your answer:" in tokenizer.decode(trace.answer_prompt_ids)
    assert answer.text != DEFAULT_NOT_FOUND
    assert answer.found is None and trace.found is None and trace.missing_terms is None
    refusing = tiny_wrapper("llama", tokenizer, MemoryConfig())
    assert refusing.answer(ABSENT_QUESTION, context=context, max_new_tokens=4) == DEFAULT_NOT_FOUND


def test_cli_memagent_is_the_baseline_and_eval_defaults_to_its_chunks():
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    assert memory_config(parser.parse_args(["--memagent"])) == MemoryConfig.memagent()
    assert memory_config(parser.parse_args(["--memagent", "--chunk-size", "300"])) == MemoryConfig.memagent(300)
    commands = argparse.ArgumentParser().add_subparsers()
    add_eval_parser(commands)
    evaluate = commands.choices["eval"]
    defaults = evaluate.parse_args(["--out", "run"])
    assert (defaults.memagent_chunk_size, defaults.memagent_memory_tokens) == (5000, 1024)


@pytest.mark.parametrize(
    "response, prediction",
    [
        ("Therefore, the answer is Eldermoor.", "Eldermoor"),
        ("The memory says so. Therefore, **the answer is** 4417-B.", "4417-B"),
        ("Eldermoor", "Eldermoor"),  # no phrase: scored whole
    ],
)
def test_memagent_answers_are_scored_after_the_answer_is(response, prediction):
    assert memagent_prediction(response) == prediction
