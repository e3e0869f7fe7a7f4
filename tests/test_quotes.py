"""The word-level checks behind notes: key terms, sentences, quotes, refusals."""

from compressmem.reader.quotes import asks_for_all, find_quote, key_terms, refuses, sentences


def test_key_terms_are_names_numbers_and_hyphenated_keys():
    assert key_terms("In which town was Mara Quill born?") == {"mara", "quill"}
    assert key_terms("What is the special magic number for tidal-falcon mentioned in the provided text?") == \
        {"tidal", "falcon"}
    assert key_terms("Find all variables that are assigned the value 52113 in the text above.") == {"52113"}
    assert key_terms("What is the secret code for the lighthouse vault?") == set()


def test_sentences_are_spans_of_the_text():
    text = "Section 9. Recollections\n\nThe clerk kept a lantern. Mara Quill was born in Eldermoor! Done"
    assert [text[a:b] for a, b in sentences(text)] == ["Section 9.", "Recollections", "The clerk kept a lantern.",
                                                      "Mara Quill was born in Eldermoor!", "Done"]


def test_a_second_hop_follows_a_key_term_of_the_notes():
    question = "What is the town where Mara Quill was born famous for?"
    section = "The mill burned. The town of Eldermoor is famous for its copper bells. Rain fell."
    assert find_quote("copper bells", section, question, "", 0.8) is None, "no link to the question yet"
    quote = find_quote("copper bells", section, question, "Mara Quill was born in the town of Eldermoor.", 0.8)
    assert section[quote.start:quote.end] == "The town of Eldermoor is famous for its copper bells."


def test_questions_asking_for_every_match_are_recognised():
    question = "What are all the special magic numbers for amber-anchor mentioned in the provided text?"
    assert asks_for_all(question) and not asks_for_all("What is the number for amber-anchor?")


def test_refusals_are_recognised():
    for text in ("NONE", "The section does not mention it.", "It is not stated.", "I don't know."):
        assert refuses(text)
    assert not refuses("The secret code for the lighthouse vault is 4719283.")


def test_a_question_worded_unlike_its_answer_keeps_the_sentence_that_shares_its_subject():
    """Measured over benchmarks/natural_questions.json: the one evidence sentence the old rule (half of the
    question's content words) dropped; two shared content words now keep it, one does not."""
    section = "The gulls nested on the roof. The secret code for the lighthouse vault is 4719283. Rain fell."
    question = "What number is needed to open the lighthouse vault?"
    quote = find_quote(question, section, question, "", 0.8)
    assert quote is not None and section[quote.start:quote.end] == "The secret code for the lighthouse vault is 4719283."
    assert find_quote(question, "The lighthouse was painted white. Rain fell.", question, "", 0.8) is None
