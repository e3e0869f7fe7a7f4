"""The judges of "found": an answer is presented as found only when the notes hold what it asserts."""

import pytest

from tests.conftest import tiny_model
from compressmem.reader.judge import CALIBRATION, Edits, GroundingJudge, Labelled, calibrate, choose_judge, edits, extract

VAULT = "The secret code for the lighthouse vault is 4719283."
BIRTH = "Mara Quill was born in the town of Eldermoor."


@pytest.mark.parametrize("question, notes, answer", [
    ("Which number opens the lighthouse vault?", VAULT, "The lighthouse vault opens with 4719283."),
    ("Where does Mara Quill come from?", BIRTH, "Mara Quill comes from Eldermoor."),
    ("Where does Mara Quill come from?", BIRTH, "She was born in the town of Eldermoor."),
    ("What is the secret code for the lighthouse vault?", VAULT, VAULT),
    ("Which town saw Mara Quill's birth?", BIRTH, "Eldermoor."),
])
def test_an_answer_the_notes_state_is_grounded(question, notes, answer):
    verdict = GroundingJudge().judge(question, notes, answer)
    assert verdict.grounded, verdict.reason


@pytest.mark.parametrize("question, notes, answer, why", [
    ("Which number opens the Reno vault?", "The secret code of the Reno vault is 6827126.",
     "The Reno vault is a fictional world in the Star Wars franchise.", "number"),      # a story, not the notes
    ("What is the code of the Reno vault?", "The code of the Tarn vault is 4410.",
     "The code of the Reno vault is 4410.", "reno"),                                    # another key's value
    ("What is the code of the Reno vault?", "The code of the Reno vault was changed last spring.",
     "The code of the Reno vault is 1234.", "number"),                                  # a value the notes lack
    ("What colour is Mara Quill's boat?", BIRTH, BIRTH, "colour"),                      # true, but not an answer
    ("What was Silas Merriman checking in 1833?",
     "In the winter of 1833, Silas Merriman, the postmistress, inspected a cracked weather vane.",
     "Sylvester Merriman, the postmistress, inspected a cracked weather vane.", "sylvester"),  # a name, first
    ("Which number opens the Isley vault?", "4161278 is the sequence which releases the Isley vault.",
     "The Isley vault is the sequence which releases the Isley vault.", "number"),      # the value dropped
    ("Where does Mara Quill come from?", BIRTH, "Not found in the context.", "declines"),
    ("Where does Mara Quill come from?", BIRTH, "Mara Quill comes from somewhere.", "0%"),
])
def test_an_answer_the_notes_do_not_state_is_not_grounded(question, notes, answer, why):
    verdict = GroundingJudge().judge(question, notes, answer)
    assert not verdict.grounded and why in verdict.reason, verdict.reason


@pytest.mark.parametrize("question, notes, answer", [
    ("Which number opens the lighthouse vault?", VAULT,
     "The number 4719283 is indeed the key to unlocking the lighthouse vault."),       # padding around the value
    ("Where was Mara Quill born?", BIRTH + "\nThe mill burned in 1901.",
     "Mara Quill was born in the town of Eldermoor, a small village in the heart of Europe."),  # an invented name
])
def test_an_answer_that_dresses_the_notes_value_in_its_own_words_is_quoted_not_found(question, notes, answer):
    verdict = GroundingJudge().judge(question, notes, answer)
    assert not verdict.grounded
    assert verdict.quote == notes.splitlines()[0], "the note holding the value, and only it"


def test_an_answer_in_its_own_wording_of_the_question_around_the_notes_value_is_quoted():
    notes = "Staff were told that the Penrith vault responds only to 7698359."
    verdict = GroundingJudge().judge("What do I need to type to get into the Penrith vault?", notes,
                                     "To get into the Penrith vault, you need to type the number 7698359.")
    assert not verdict.grounded and verdict.quote == notes


def test_another_vault_of_the_same_kind_is_not_the_one_asked_and_a_note_on_another_matter_is_not_quoted():
    harbour = GroundingJudge().judge("What is the secret code for the harbour vault?", VAULT, VAULT)
    assert not harbour.grounded and "harbour vault" in harbour.reason and harbour.quote is None
    buried = GroundingJudge().judge("Where is Mara Quill buried?", BIRTH, "Mara Quill is buried in Eldermoor, Europe.")
    assert not buried.grounded and buried.quote is None


PAY = "The town clerk was paid 34 shillings a month, a sum considered generous at the time."
REPAIRS = "It was Osric Redfern who first proposed repairs to the village green, which took 18 years to approve."


@pytest.mark.parametrize("question, notes, answer, why", [
    ("Who cast the copper bells of Eldermoor?", "The town of Eldermoor is famous for its copper bells.",
     "The town of Eldermoor is famous for its copper bells.", "asks for a name"),       # who, answered by no one
    ("In which year did the first train reach the town?", "The first train reached the town in a wet summer.",
     "The first train reached the town in a wet summer.", "asks for a year"),           # which year, given none
    ("How much was the lighthouse keeper paid each month?", VAULT + "\n" + PAY,
     "The lighthouse keeper was paid 34 shillings a month.", "lighthouse"),             # the clerk's pay
    ("Who first proposed repairs to the lighthouse?", VAULT + "\n" + REPAIRS,
     "The lighthouse's original owner, Osric Redfern, was the first to propose repairs.", "lighthouse"),
])
def test_an_answer_of_the_wrong_kind_or_joined_from_two_sentences_is_not_grounded_nor_quoted(
    question, notes, answer, why
):
    verdict = GroundingJudge().judge(question, notes, answer)
    assert not verdict.grounded and why in verdict.reason and verdict.quote is None, verdict


@pytest.mark.parametrize("question, notes, answer", [
    ("Who was the first to suggest mending the village green?", VAULT + "\n" + REPAIRS,
     "Osric Redfern was the first to suggest mending the village green."),
    ("How much did the town clerk earn each month?", VAULT + "\n" + PAY, "The town clerk earned 34 shillings."),
    ("In what year was the mill rebuilt?", "The mill was rebuilt in 1901 by the parish.", "It was rebuilt in 1901."),
])
def test_a_name_or_number_question_answered_from_one_sentence_is_grounded(question, notes, answer):
    verdict = GroundingJudge().judge(question, notes, answer)
    assert verdict.grounded, verdict.reason


BRAM = "Bram Redfern, the surveyor, was remembered for a remarkable temper and an excellent memory for faces."


def test_a_paraphrase_answered_with_a_word_of_the_notes_is_grounded_or_quoted_and_an_unrelated_number_is_no_gap():
    notes = BRAM + "\nIn 1829 the mill burned."
    question = "What job did Bram Redfern do?"
    plain = GroundingJudge().judge(question, notes, "Bram Redfern was a surveyor with an excellent memory for faces.")
    assert plain.grounded, plain.reason  # 1829 is in a line the answer does not draw on
    padded = GroundingJudge().judge(question, notes, "Bram Redfern was a surveyor, a role he excelled in.")
    assert not padded.grounded and padded.quote == BRAM
    buried = GroundingJudge().judge("Where is Mara Quill buried?", BIRTH, "Mara Quill is buried in the town, a quiet place.")
    assert not buried.grounded and buried.quote is None  # it says "buried", which the notes do not


BELLS = "The town of Eldermoor is famous for its copper bells."


@pytest.mark.parametrize("question, answer, grounded", [
    ("Who cast the copper bells of Eldermoor?", BIRTH, False),              # a name, from a sentence on her birth
    ("Where is Mara Quill buried?", BELLS, False),                           # the town's bells, not her grave
    ("In which year were the copper bells cast?", "The copper bells were cast in 18 years.", False),  # not a year
    ("What is the town where Mara Quill was born famous for?", BELLS, True),  # two sentences, two hops
    ("Where does Mara Quill come from?", "She was born in the town of Eldermoor.", True),  # one verb, retold
])
def test_the_sentence_giving_the_value_speaks_of_what_the_question_asks(question, answer, grounded):
    notes = BIRTH + "\n" + BELLS + "\nIt took 18 years to cast the bells."
    verdict = GroundingJudge().judge(question, notes, answer)
    assert verdict.grounded == grounded and (grounded or verdict.quote is None), verdict


@pytest.mark.parametrize("question, notes, answer", [
    ("What figures give access to the Bellmont vault?", "Staff were told that the Bellmont vault responds only to 5825163.",
     "The Bellmont vault is accessed through the Bellmont vault's access control system."),
    ("Which digits let someone inside the Tarrant vault?", "Staff were told that the Tarrant vault responds only to 8229344.",
     'The answer to the question "Which digits let someone inside the Tarrant vault?" is:'),
    ("What figures give access to the Penrith vault?", "Dialling 7745276 makes the lock on the Penrith vault spring back.",
     "The Penrith vault is a fictional vault created by the author of the story."),
    ("Which number opens the Reno vault?", "The secret code of the Reno vault is 6827126.",
     "The Reno vault is a fictional world in the Star Wars franchise."),
])
def test_a_number_question_whose_answer_lost_the_value_gets_the_one_note_naming_its_key_with_one(question, notes, answer):
    verdict = GroundingJudge().judge(question, notes, answer)
    assert not verdict.grounded and verdict.quote == notes, verdict


@pytest.mark.parametrize("question, notes", [
    ("What figures give access to the Bellmont vault?",                      # two values for one key: which?
     "The Bellmont vault responds only to 5825163.\nThe Bellmont vault once answered to 1135129."),
    ("What is the code of the Reno vault?", "The Reno vault was built in 1901."),          # a year is not a code
    ("What is the code of the Reno vault?", "The code of the Reno vault was changed last spring."),  # no value
    ("How much was the lighthouse keeper paid each month?", PAY),                          # nothing named to match
    ("Which number opens the Reno vault?", "The secret code of the Tarn vault is 6827126."),  # another key
    ("What did the Reno vault hold?", "The secret code of the Reno vault is 6827126."),    # not a number question
])
def test_no_note_is_quoted_for_a_number_question_without_exactly_one_value_beside_its_key(question, notes):
    verdict = GroundingJudge().judge(question, notes, "It is a fictional world in the Star Wars franchise.")
    assert not verdict.grounded and verdict.quote is None, verdict


@pytest.mark.parametrize("question, notes, answer, graft", [
    ("How much was the lighthouse keeper paid each month?", PAY,
     "The lighthouse keeper was paid 34 shillings a month, a sum considered generous at the time.", "keeper"),
    ("Who first proposed repairs to the lighthouse?", REPAIRS,
     "The lighthouse's original owner, Osric Redfern, was the first to propose repairs to the village green, which "
     "took 18 years to approve.", "lighthouse"),
])
def test_a_copied_note_with_the_questions_subject_set_into_it_is_not_grounded_nor_quoted(question, notes, answer, graft):
    verdict = GroundingJudge().judge(question, notes, answer)
    assert not verdict.grounded and graft in verdict.reason and verdict.quote is None, verdict


def test_words_of_its_own_added_to_a_copied_note_are_edits():
    answer = ("The lighthouse's original owner, Osric Redfern, was the first to propose repairs to the village green, "
              "which took 18 years to approve.")
    assert edits(REPAIRS, "Who first proposed repairs to the lighthouse?", answer).added == ["original", "owner"]
    assert edits(REPAIRS, "Who first proposed repairs?", REPAIRS) == Edits([], [])


def test_a_copied_note_with_another_name_in_place_of_its_own_is_not_grounded_and_with_its_own_is():
    rowan = "It was Rowan Redfern who first proposed repairs to the old granary, which took 13 years to approve."
    notes = rowan + "\n" + REPAIRS
    swapped = GroundingJudge().judge("Who first proposed repairs to the village green?", notes,
                                     "Rowan Redfern was the first to propose repairs to the village green, which took "
                                     "18 years to approve.")
    assert not swapped.grounded and "rowan" in swapped.reason and swapped.quote is None, swapped
    kept = GroundingJudge().judge("Who first proposed repairs to the village green?", notes,
                                  "Osric Redfern was the first to propose repairs to the village green, which took "
                                  "18 years to approve.")
    assert kept.grounded, kept.reason


def test_a_preposition_after_two_different_words_is_not_another_kind_of_thing():
    carrow = ("In the remarkable autumn of 1860, Tilda Carrow, a ropemaker, restored a map of the shoals near the "
              "village green.")
    notes = "Tilda Stroud restored a set of brass scales near the salt marsh.\n" + carrow
    verdict = GroundingJudge().judge("What did Tilda Carrow bring back to good condition near the village green?",
                                     notes, "Tilda Carrow brought back a map of the shoals near the village green.")
    assert "speak of the" not in verdict.reason and (verdict.grounded or verdict.quote == carrow), verdict


@pytest.mark.parametrize("question, notes, answer", [
    ("How many letters written by Silas Kettering survive?",
     "The archive holds 27 letters from Silas Kettering, most of them about the price of grain.",
     "The archive holds 27 letters written by Silas Kettering, most of them about the price of grain."),
    ("Whose idea was it to fix up the Weavers' Hall, a plan that waited forty years for approval?",
     "It was Vera Whitcombe who first proposed repairs to the Weavers' Hall, which took 40 years to approve.",
     "Vera Whitcombe was the one who proposed repairs to the Weavers' Hall, a plan that took 40 years to approve."),
    ("What is the name of Mara Quill's home town?", BIRTH, "Mara Quill's home town is Eldermoor."),  # one word retold
])
def test_a_copied_note_with_words_of_the_question_around_it_is_grounded(question, notes, answer):
    verdict = GroundingJudge().judge(question, notes, answer)
    assert verdict.grounded, verdict.reason


def test_a_copied_note_with_a_word_of_the_same_family_as_the_questions_is_grounded():
    verdict = GroundingJudge().judge("What happens to slow startups?",
                                     "Startups that grow slowly rarely survive their second year.",
                                     "Slow startups rarely survive their second year.")
    assert verdict.grounded, verdict.reason


def test_no_quote_is_offered_for_another_key_or_for_a_value_the_notes_lack():
    tarn = GroundingJudge().judge("What is the code of the Reno vault?", "The code of the Tarn vault is 4410.",
                                  "The code of the Reno vault is 4410.")
    lacking = GroundingJudge().judge("What is the code of the Reno vault?", "The Reno vault was built in 1901.",
                                     "The code of the Reno vault is 5522.")
    assert not tarn.grounded and tarn.quote is None
    assert not lacking.grounded and lacking.quote is None


def test_the_grounding_judge_passes_its_own_calibration():
    assert calibrate(GroundingJudge()) == 1.0


class _Yes:
    name = "yes"

    def judge(self, question, notes, answer):
        return GroundingJudge().judge(question, notes, answer).__class__(True, "always", self.name)


def test_calibration_counts_a_judge_that_always_agrees_as_wrong_on_every_ungrounded_case():
    wrong = sum(not case.grounded for case in CALIBRATION)
    assert 0 < wrong < len(CALIBRATION)
    assert calibrate(_Yes()) == pytest.approx(1 - wrong / len(CALIBRATION))
    assert calibrate(_Yes(), (Labelled("a", "b?", "c", True),)) == 1.0


def test_auto_falls_back_to_grounding_for_a_model_that_fails_calibration(tokenizer):
    model = tiny_model("llama", tokenizer)
    judge, why = choose_judge("auto", model, tokenizer)
    assert judge.name == "grounding" and "calibration" in why
    assert choose_judge("model", model, tokenizer)[0].name == "model"
    assert choose_judge("grounding", model, tokenizer)[0].name == "grounding"


def test_a_note_saying_the_same_of_another_thing_does_not_answer():
    """The question repeats what a note says (three words in order) and then names a thing the notes lack, where the
    note names another: an answer in words of its own, joining two notes, is not what they say."""
    notes = ("It was Osric Redfern who first proposed repairs to the village green, which took 18 years to approve.\n"
             "It was Petra Osgood who first proposed repairs to Heron Street, which took 18 years to approve.")
    joined = GroundingJudge().judge("Who first proposed repairs to the lighthouse?", notes,
                                    "Petra Osgood was the first to propose repairs to the lighthouse, while Rowan "
                                    "Redfern was the first to propose repairs to Heron Street.")
    assert not joined.grounded and "lighthouse" in joined.reason and joined.quote is None, joined
    asked = GroundingJudge().judge("Who first proposed repairs to Heron Street?", notes,
                                   "Petra Osgood was the first to propose repairs to Heron Street.")
    assert asked.grounded, asked.reason
    reworded = GroundingJudge().judge("Who was the first to suggest mending Heron Street?", notes,
                                      "Petra Osgood first proposed repairs to Heron Street.")
    assert reworded.grounded, reworded.reason


def test_a_question_word_the_answer_leaves_alone_elsewhere_in_the_notes_does_not_stop_the_quote():
    """"hold" in another note ("The archive holds ...") is no sign that the clerk's line speaks of something else."""
    agnes = "Agnes Blackwell, the town clerk, was remembered for a quiet temper and an excellent memory for faces."
    notes = agnes + "\nThe archive holds 30 letters from Walter Blackwell, most of them about the price of grain."
    verdict = GroundingJudge().judge("What position did Agnes Blackwell hold in the town?", notes,
                                     "Agnes Blackwell was a town clerk in the town of Agnes Blackwell, Massachusetts.")
    assert not verdict.grounded and "massachusett" in verdict.reason and verdict.quote == agnes, verdict


def test_a_full_name_asked_is_named_whole_in_the_notes_not_word_by_word():
    """Notes on Tilda Carrow and Jonah Kettering hold both words of "Tilda Kettering", not her."""
    question = "Who disputed ownership of a map of the shoals with Tilda Kettering?"
    others = ("In the remarkable autumn of 1860, Tilda Carrow, a ropemaker, restored a map of the shoals near the "
              "village green.\nThe papers of Jonah Kettering say little about the shoals.")
    joined = GroundingJudge().judge(question, others, "The papers of Jonah Kettering dispute ownership of a map of "
                                                      "the shoals with Tilda Carrow.")
    assert not joined.grounded and "tilda kettering" in joined.reason and joined.quote is None, joined
    hers = "Tilda Kettering and Hollis Pellham quarrelled for a whole winter over who owned a map of the shoals."
    verdict = GroundingJudge().judge(question, others + "\n" + hers,
                                     "Hollis Pellham quarrelled with Tilda Kettering over who owned a map of the shoals.")
    assert verdict.grounded, verdict.reason


TILDAS = ("In the stormy winter of 1796, Tilda Stroud, the harbourmaster, donated a set of brass scales near the salt "
          "marsh.\nIn the mild spring of 1812, Dillon Carrow, a sailmaker, mended a set of brass scales near St.\n"
          "In the remarkable autumn of 1860, Tilda Carrow, a ropemaker, restored a map of the shoals near the village "
          "green.")


@pytest.mark.parametrize("question, notes, expected", [
    ("What did Tilda Carrow bring back to good condition near the village green?", TILDAS, TILDAS.splitlines()[2]),
    ("Which year did Tilda Stroud donate brass scales near the salt marsh?", TILDAS, TILDAS.splitlines()[0]),
    ("Which year did Tilda Stroud give away a set of brass scales?", TILDAS, None),  # a tie with Dillon Carrow's
    ("Where is Mara Quill buried?", BIRTH, None),                                 # nothing of what it asks
    ("Who cast the copper bells of Eldermoor?", BIRTH + "\n" + BELLS, None),      # no name of the line's own
    ("What is Mara Quill's home town famous for?", BIRTH + "\n" + BELLS, None),   # the bells' line lacks her name
    ("What is the town where Mara Quill was born famous for?", BIRTH + "\n" + BELLS, None),  # a tie: town, born / famous
    ("What is the town where Mara Quill was born known for?", BIRTH + "\n" + BELLS, None),  # a first hop
    ("What is the town where Mara Quill was born famous for?", BIRTH, None),     # a name to its words, no more
    ("How many people live in Eldermoor?", BIRTH + "\n" + BELLS, None),           # no number
    ("Who restored a map of the shoals near the village green?", TILDAS, None),   # names nothing
    ("What did Tilda Kettering restore near the village green?", TILDAS, None),   # Tilda and Carrow, not her
])
def test_the_note_to_quote_when_no_answer_is_grounded(question, notes, expected):
    assert extract(question, notes) == expected


def test_a_copied_note_padded_with_words_of_its_own_gives_the_notes_value_as_a_quote_for_a_number_question():
    needle = "Staff were told that the Zennor vault responds only to 3986689."
    verdict = GroundingJudge().judge("Which digits let someone inside the Zennor vault?", needle,
                                     "The Zennor vault responds only to 3986689, which is a special number that allows "
                                     "people to enter the vault.")
    assert not verdict.grounded and "adds" in verdict.reason and verdict.quote == needle, verdict


def test_the_notes_to_quote_for_a_question_asking_for_all_are_every_line_giving_a_value_for_one_of_its_keys():
    lines = [f"One of the special magic numbers for {key} is: {value}." for key, value in
             [("gentle-pepper", 7240404), ("fabled-canyon", 7280888), ("quiet-falcon", 1111111)]]
    notes = "\n".join([*lines, "The special magic numbers for fabled-canyon were never written down."])
    question = "What are all the special magic numbers for fabled-canyon, quiet-jackal and gentle-pepper?"
    assert extract(question, notes) == f"{lines[0]} {lines[1]}"  # "quiet-falcon" is not "quiet-jackal"; no value
    assert extract("What are all the special magic numbers for tidal-oak?", notes) is None
