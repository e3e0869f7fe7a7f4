"""Reading until the answer is grounded: the reader writes an answer after each read that added a note, the judge
checks it against the notes, and only a grounded answer (or, for one that found the notes' value but said more,
the notes' sentence, quoted) is presented as found. Answers are scripted here; the judge and the loop are real."""

import pytest

from compressmem import ChunkingConfig, GateConfig, MemoryConfig, NotesConfig, ReadingConfig

from .conftest import tiny_wrapper

FILLER = "The gulls circled the old pier while the tide went out over the grey mud flats. " * 6
CONTEXT = (FILLER + "The Reno vault stands behind the harbour office. " + FILLER
           + "The secret code of the Reno vault is 6827126. " + FILLER)
QUESTION = "Which number opens the Reno vault?"
CONFIG = MemoryConfig(chunking=ChunkingConfig(64), gate=GateConfig("lexical", top_k=3),
                      reading=ReadingConfig(judge="grounding", order="document"), notes=NotesConfig(note_tokens=4))


def _scripted(wrapper, answers):
    """Make the wrapper's answer step write `answers(notes)` instead of generating; returns the notes it saw."""
    seen = []

    def generate(prompts, generation_kwargs):
        texts = []
        for prompt in prompts:
            text = wrapper.tokenizer.decode(prompt)
            seen.append(text)
            texts.append(answers(text))
        return None, [wrapper.prompts.encode(t) for t in texts]

    wrapper._generate_answers = generate
    return seen


def _reads_say(wrapper, monkeypatch, said):
    """Make every read's output `said` (the notes still follow it through the real quote rules)."""
    from compressmem.reader import loop

    real = loop.generate_steps

    def reads(model, tokenizer, inputs, *args, **kwargs):
        return [w._replace(ids=wrapper.prompts.encode(said)) for w in real(model, tokenizer, inputs, *args, **kwargs)]

    monkeypatch.setattr(loop, "generate_steps", reads)


@pytest.fixture
def wrapper(tokenizer):
    return tiny_wrapper("llama", tokenizer, CONFIG)


def test_an_invented_answer_is_not_found_and_the_next_block_is_read(wrapper):
    def answers(prompt):
        if "6827126" in prompt:
            return "The secret code of the Reno vault is 6827126."
        return "The Reno vault is a fictional world in the Star Wars franchise."

    _scripted(wrapper, answers)
    answer = wrapper.answer(QUESTION, context=CONTEXT, return_sources=True)
    trace = answer.trace
    written = [a for a in trace.attempts if a.by == "notes"]  # the tiny model's own outputs are tried too, and fail
    assert [a.grounded for a in written] == [False, True], trace.attempts
    assert "asks for a number" in written[0].reason and not any(a.grounded for a in trace.attempts if a.by == "read")
    assert answer.found and trace.outcome == "answered" and answer.text == "The secret code of the Reno vault is 6827126."
    noted = [step for step in trace.steps if step.source is not None]
    assert len(noted) == 2 and "6827126" in noted[-1].source.text and trace.steps[-1] is noted[-1]  # then it stopped
    assert trace.judge == "grounding" and answer.sources == [step.source for step in noted]


def test_no_grounded_answer_within_the_budget_is_not_found(wrapper):
    seen = _scripted(wrapper, lambda prompt: "The Reno vault is a fictional world in the Star Wars franchise.")
    answer = wrapper.answer(QUESTION, context=CONTEXT, return_sources=True)
    assert answer.found is False and answer.trace.outcome == "not found"
    assert answer.text == CONFIG.prompts.not_found and answer.sources == []
    written = [a for a in answer.trace.attempts if a.by == "notes"]
    assert len(written) == len(seen) >= 1 and not any(a.grounded for a in answer.trace.attempts)


def test_an_answer_that_found_the_value_but_invents_around_it_is_given_as_the_notes_quote(wrapper):
    def answers(prompt):
        if "6827126" in prompt:
            return "The Reno vault opens with 6827126, the number Captain Nemo chose."
        return "NONE"

    _scripted(wrapper, answers)
    answer = wrapper.answer(QUESTION, context=CONTEXT, return_sources=True)
    assert answer.trace.outcome == "quoted" and answer.found
    assert answer.text == 'The context says: "The secret code of the Reno vault is 6827126."'
    assert "nemo" in [a for a in answer.trace.attempts if a.by == "notes"][-1].reason


def test_memagent_mode_answers_once_unjudged(tokenizer):
    wrapper = tiny_wrapper("llama", tokenizer, CONFIG.replace(prompts=CONFIG.prompts.__class__(not_found=None)))
    seen = _scripted(wrapper, lambda prompt: "The Reno vault is a fictional world in the Star Wars franchise.")
    answer = wrapper.answer(QUESTION, context=CONTEXT, return_sources=True)
    assert len(seen) == 1 and answer.found is None and answer.trace.attempts == []
    assert answer.text == "The Reno vault is a fictional world in the Star Wars franchise."


def test_the_reads_own_output_is_the_answer_when_it_is_grounded_and_the_written_one_is_not(wrapper, monkeypatch):
    """A small model often says the answer right as it reads the section, then garbles it answering from the
    notes: the read's output, judged like any answer, is given when it is grounded."""
    said = "The number that opens the Reno vault is 6827126."
    _reads_say(wrapper, monkeypatch, said)
    _scripted(wrapper, lambda prompt: "The Reno vault opens with 1234567890.")
    answer = wrapper.answer(QUESTION, context=CONTEXT, return_sources=True)
    assert answer.text == said and answer.found and answer.trace.outcome == "answered"
    last = answer.trace.attempts[-2:]
    assert [(a.by, a.grounded) for a in last] == [("notes", False), ("read", True)] and "1234567890" in last[0].reason


def test_a_reads_output_that_does_not_echo_the_question_is_not_taken_for_its_answer(wrapper, monkeypatch):
    """'The Reno vault stands behind the harbour office.' describes a section; it answers nothing asked."""
    _reads_say(wrapper, monkeypatch, "The Reno vault stands behind the harbour office.")
    _scripted(wrapper, lambda prompt: "The Reno vault is a fictional world in the Star Wars franchise.")
    answer = wrapper.answer(QUESTION, context=CONTEXT, return_sources=True)
    assert answer.trace.outcome == "not found" and not any(a.by == "read" for a in answer.trace.attempts)


SILAS = "In the winter of 1833 Silas Merriman inspected a cracked weather vane near the customs house."
PEOPLE = (FILLER + "Silas Redfern first proposed repairs to the customs house. " + FILLER + SILAS + " " + FILLER)


@pytest.mark.parametrize("question, quoted", [
    ("What was Silas Merriman checking near the customs house in 1833?", True),
    ("Where is Silas Merriman buried?", False),  # the note names him but speaks of nothing the question asks
])
def test_when_every_answer_garbles_the_notes_the_one_note_on_what_was_asked_is_quoted(wrapper, question, quoted):
    """No answer is grounded ("Sylvester" is no name of the notes): the note naming the question's names that speaks
    most of what it asks is given, marked as a quote; a question the notes do not speak to stays "not found"."""
    _scripted(wrapper, lambda prompt: "Sylvester Merriman inspected a cracked weather vane near the customs house.")
    answer = wrapper.answer(question, context=PEOPLE, return_sources=True)
    assert not any(a.grounded for a in answer.trace.attempts) and SILAS in answer.trace.notes, answer.trace
    if quoted:
        assert answer.trace.outcome == "quoted" and answer.text == f'The context says: "{SILAS}"'
    else:
        assert answer.trace.outcome == "not found" and answer.text == CONFIG.prompts.not_found
