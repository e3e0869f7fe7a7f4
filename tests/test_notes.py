import torch

from compressmem import NotesConfig
from compressmem.reader import StepInput, generate_steps, grounding, update_notes

from .conftest import tiny_model

SECTION = "The ferry left at dawn. One of the special magic numbers for amber-river is: 4417021. Gulls followed."
QUESTION = "What is the special magic number for amber-river?"


def test_grounding_counts_only_new_words_found_in_the_section():
    assert grounding("The special magic number for amber-river is 4417021.", SECTION, QUESTION) == 1.0
    assert grounding("The special magic number for amber-river is 1.", SECTION, QUESTION) == 0.0
    assert grounding("The number is 4417021, said the captain Moreau.", SECTION, QUESTION) < 0.8


def test_append_keeps_grounded_notes_and_drops_the_rest(tokenizer):
    config = NotesConfig()
    quote = "One of the special magic numbers for amber-river is: 4417021."
    notes = update_notes("", quote + "\nextra line", SECTION, QUESTION, config, tokenizer)
    assert notes == quote
    for output in ("NONE", "The answer is 9999999.", "", "The special magic number for amber-river is 1."):
        assert update_notes(notes, output, SECTION, QUESTION, config, tokenizer) == notes
    assert update_notes(notes, quote, SECTION, QUESTION, config, tokenizer) == notes


def test_notes_never_exceed_their_token_budget(tokenizer):
    config = NotesConfig(max_tokens=12)
    notes = ""
    for note in ("The ferry left at dawn.", "Gulls followed.",
                 "One of the special magic numbers for amber-river is: 4417021."):
        notes = update_notes(notes, note, SECTION, "When did it leave?", config, tokenizer)
        assert len(tokenizer(notes, add_special_tokens=False)["input_ids"]) <= 12
    assert notes.endswith("4417021."), "the newest notes are kept"
    rewrite = NotesConfig(update="rewrite", max_tokens=5)
    rewritten = update_notes("old", "a b c d e f g h i j", SECTION, QUESTION, rewrite, tokenizer)
    assert len(tokenizer(rewritten, add_special_tokens=False)["input_ids"]) <= 5


def test_min_new_tokens_decodes_past_end_of_sequence(tokenizer):
    """Timing runs fix the notes' length through the reads' generation settings (`notes_kwargs`)."""
    model = tiny_model("llama", tokenizer)
    prompt = StepInput(None, None, torch.tensor(tokenizer("a short section")["input_ids"]), 0)
    with torch.no_grad():
        first = int(model(prompt.input_ids[None]).logits[0, -1].argmax())
    model.generation_config.eos_token_id = first  # the very first greedy token ends the read
    free = generate_steps(model, tokenizer, [prompt], 6)[0].ids
    exact = generate_steps(model, tokenizer, [prompt], 6, {"min_new_tokens": 6})[0].ids
    assert free.tolist() == [first]
    assert exact.numel() == 6 and first not in exact[:5].tolist()
