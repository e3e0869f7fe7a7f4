import torch

from compressmem import NotesConfig
from compressmem.reader import StepInput, generate_steps, update_notes

from .conftest import tiny_model

SECTION = "The ferry left at dawn. One of the special magic numbers for amber-river is: 4417021. Gulls followed."
QUESTION = "What is the special magic number for amber-river?"


def test_a_note_is_the_sentence_the_output_points_to(tokenizer):
    config = NotesConfig()
    sentence = "One of the special magic numbers for amber-river is: 4417021."
    for output in (sentence, "The special magic number for amber-river is 4417021.", "4417021"):
        notes, quote = update_notes("", output + "\nextra line", SECTION, QUESTION, config, tokenizer)
        assert notes == sentence and SECTION[quote.start:quote.end] == sentence and quote.matched


def test_a_refusal_keeps_the_sentence_naming_the_asked_key_and_nothing_for_a_question_without_one(tokenizer):
    """A small model refuses the very section that holds the answer when asked in other words; for a question
    naming its key the sentence naming it is kept all the same (the judge of the answer decides), for one
    without a key a refusal keeps nothing."""
    config = NotesConfig()
    sentence = "One of the special magic numbers for amber-river is: 4417021."
    for output in ("NONE", "", "The section does not mention amber-river."):
        notes, quote = update_notes("", output, SECTION, QUESTION, config, tokenizer)
        assert notes == sentence and not quote.matched
        assert update_notes("", output, SECTION.replace("amber-river", "tidal-oak"), QUESTION, config,
                            tokenizer) == ("", None), "no sentence names the asked key"
    plain = "What is the special magic number of the ferry?"
    for output in ("NONE", "", "The section does not mention it."):
        assert update_notes("", output, SECTION, plain, config, tokenizer) == ("", None)
    notes, quote = update_notes("", "The answer is 9999999.", SECTION, QUESTION, config, tokenizer)
    assert notes == "One of the special magic numbers for amber-river is: 4417021." and not quote.matched, \
        "an output pointing nowhere gives way to the section's sentence about the question, never to its own value"
    kept = "One of the special magic numbers for amber-river is: 4417021."
    assert update_notes(kept, kept, SECTION, QUESTION, config, tokenizer) == (kept, None), "no note twice"


def test_a_sentence_about_another_key_is_not_kept(tokenizer):
    section = "The ferry left at dawn. One of the special magic numbers for tidal-oak is: 1234567. Gulls followed."
    for output in ("The special magic number for amber-river is 1234567.", "The ferry left at dawn."):
        assert update_notes("", output, section, QUESTION, NotesConfig(), tokenizer) == ("", None)


def test_notes_never_exceed_their_token_budget(tokenizer):
    config = NotesConfig(max_tokens=12)
    notes = ""
    notes_about = ("The amber-river ferry left at dawn.", "Gulls followed the amber-river ferry.",
                   "One of the special magic numbers for amber-river is: 4417021.")
    for note in notes_about:
        notes, _ = update_notes(notes, note, " ".join(notes_about), QUESTION, config, tokenizer)
        assert notes and len(tokenizer(notes, add_special_tokens=False)["input_ids"]) <= 12
    assert notes.endswith("4417021.") and "dawn" not in notes, "the newest notes are kept, the oldest make way"
    rewrite = NotesConfig(update="rewrite", max_tokens=5)
    rewritten, quote = update_notes("old", "a b c d e f g h i j", SECTION, QUESTION, rewrite, tokenizer)
    assert len(tokenizer(rewritten, add_special_tokens=False)["input_ids"]) <= 5 and quote is None


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


def test_a_sentence_cut_by_the_chunking_is_quoted_whole_from_the_next_block(tokenizer):
    block = "The ferry left at dawn. One of the special magic numbers for amber-river is: 44"
    following = "17021. Gulls."
    notes, quote = update_notes("", "The special magic number for amber-river is 44.", block + following, QUESTION,
                                NotesConfig(), tokenizer, within=(0, len(block)))
    assert notes == "One of the special magic numbers for amber-river is: 4417021."
    assert update_notes("", "Gulls.", block + following, QUESTION, NotesConfig(), tokenizer,
                        within=(0, len(block)))[0] != "Gulls.", "a sentence wholly in the next block is not this read's"
