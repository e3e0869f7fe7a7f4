from compressmem import MemoryConfig
from compressmem.memory import grounding, update_memory

SECTION = "The ferry left at dawn. One of the special magic numbers for amber-river is: 4417021. Gulls followed."
QUESTION = "What is the special magic number for amber-river?"


def test_grounding_counts_only_new_words_found_in_the_section():
    assert grounding("The special magic number for amber-river is 4417021.", SECTION, QUESTION) == 1.0
    assert grounding("The special magic number for amber-river is 1.", SECTION, QUESTION) == 0.0
    assert grounding("The number is 4417021, said the captain Moreau.", SECTION, QUESTION) < 0.8


def test_append_keeps_grounded_notes_and_drops_the_rest(tokenizer):
    config = MemoryConfig()
    quote = "One of the special magic numbers for amber-river is: 4417021."
    memory = update_memory("", quote + "\nextra line", SECTION, QUESTION, config, tokenizer)
    assert memory == quote
    for output in ("NONE", "The answer is 9999999.", "", "The special magic number for amber-river is 1."):
        assert update_memory(memory, output, SECTION, QUESTION, config, tokenizer) == memory
    assert update_memory(memory, quote, SECTION, QUESTION, config, tokenizer) == memory


def test_memory_never_exceeds_its_token_budget(tokenizer):
    config = MemoryConfig(memory_tokens=12)
    memory = ""
    notes = ["The ferry left at dawn.", "Gulls followed.", "One of the special magic numbers for amber-river is: 4417021."]
    for note in notes:
        memory = update_memory(memory, note, SECTION, "When did it leave?", config, tokenizer)
        assert len(tokenizer(memory, add_special_tokens=False)["input_ids"]) <= 12
    assert memory.endswith("4417021."), "the newest notes are kept"
    rewrite = MemoryConfig(memory_update="rewrite", memory_tokens=5)
    rewritten = update_memory("old", "a b c d e f g h i j", SECTION, QUESTION, rewrite, tokenizer)
    assert len(tokenizer(rewritten, add_special_tokens=False)["input_ids"]) <= 5


def test_fixed_update_tokens_decodes_past_end_of_sequence(tokenizer):
    import torch

    from compressmem.reasoner import UpdateInput, generate_updates

    from .conftest import tiny_model

    model = tiny_model("llama", tokenizer)
    prompt = UpdateInput(None, None, torch.tensor(tokenizer("a short section")["input_ids"]), 0)
    with torch.no_grad():
        first = int(model(prompt.input_ids[None]).logits[0, -1].argmax())
    model.generation_config.eos_token_id = first  # the very first greedy token ends the update
    free = generate_updates(model, tokenizer, [prompt], 6)
    exact = generate_updates(model, tokenizer, [prompt], 6, exact=True)
    assert free == [tokenizer.decode([first], skip_special_tokens=True).strip()]
    assert len(tokenizer(exact[0], add_special_tokens=False)["input_ids"]) >= 4  # 6 decoded, none was the stop
