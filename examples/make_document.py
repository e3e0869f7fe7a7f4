"""Write ``long_document.txt`` and ``questions.json`` for the compressmem examples.

The document (~120,000 characters, ~28,000 Llama-style tokens) is a synthetic archive of
Wrenholt, a fictional harbour town: English prose assembled from templates and word lists
with ``random.Random(0)``, so every run writes byte-identical files. All of the text is
generated here, so it is free to ship. Hidden in it, each exactly once, are a 7-digit vault
code about 60% of the way through and a two-hop pair (a birthplace early, what that town is
famous for late); ``questions.json`` holds the matching questions and accepted answers.

Usage: python examples/make_document.py
"""

from __future__ import annotations

import calendar
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_CHARS = 120_000
TITLE = "The Wrenholt Town Archive: Selected Records, Letters and Recollections"
FACTS = (  # (approximate fraction of the way through the document, sentence)
    (0.15, "Mara Quill was born in the town of Eldermoor."),
    (0.60, "The secret code for the lighthouse vault is 4719283."),
    (0.85, "The town of Eldermoor is famous for its copper bells."),
)
QUESTIONS = [
    {"question": "What is the secret code for the lighthouse vault?", "answers": ["4719283"]},
    {"question": "In which town was Mara Quill born?", "answers": ["Eldermoor"]},
    {"question": "What is the town where Mara Quill was born famous for?",
     "answers": ["copper bells"]},
]
# Words that must appear in the document only inside FACTS.
RESERVED = ("Mara", "Quill", "Eldermoor", "lighthouse", "vault", "copper", "4719283")

WORDS = {key: [w.strip() for w in value.split(",")] for key, value in {
    "first": "Agnes, Bram, Cora, Dillon, Edith, Felix, Greta, Hollis, Ivo, Jonah, Lena, Martin, "
             "Nell, Osric, Petra, Rowan, Silas, Tilda, Ulric, Vera, Walter, Yara, Ada, Tobias",
    "last": "Ashdown, Blackwell, Carrow, Dunmore, Fenwick, Galloway, Hartley, Kettering, Lowther, "
            "Merriman, Norcott, Pellham, Redfern, Stroud, Thorne, Varley, Whitcombe, Osgood",
    "role": "the harbourmaster, the town clerk, the schoolmistress, a ropemaker, the ferryman, "
            "the parish warden, a net mender, the miller, the apothecary, a cooper, the "
            "postmistress, the surveyor, a retired sea captain, the innkeeper, a sailmaker",
    "place": "the Mill Road, Tanner's Lane, the fish market, the north quay, the old granary, St. "
             "Aldric's church, the Weavers' Hall, the salt marsh, Gull Point, the toll bridge, "
             "the chalk quarry, the lower orchard, the harbour wall, the Crown and Anchor inn, "
             "the rope walk, Heron Street, the customs house, the village green, the east dunes",
    "thing": "a ledger of tide tables, a cracked weather vane, a bundle of letters, a set of "
             "brass scales, a painted shop sign, a storm lantern, a ship's figurehead, the parish "
             "register, a map of the shoals, a chest of sailcloth, a barrel of herring, a broken "
             "church clock, a box of school slates, a pair of oak gates",
    "adj": "quiet, bitter, prosperous, stormy, long, uneasy, hopeful, lean, busy, wet, "
           "remarkable, difficult, cheerful, anxious, mild",
    "event": "a flood, a fire in the rope walk, a dispute over fishing rights, the opening of the "
             "new school, a poor harvest, the arrival of the railway surveyors, a winter of "
             "heavy snow, an outbreak of fever, the rebuilding of the harbour wall, a smugglers' "
             "trial, the wreck of a coal barge, a strike at the net lofts",
    "feeling": "pride, suspicion, relief, amusement, gratitude, alarm, indifference, delight",
    "verb": "repaired, sold, mended, painted, rebuilt, inspected, donated, cleaned, carried, "
            "measured, auctioned, restored",
    "weather": "fog, rain, gales, frost, sleet, sea mist, hail, a bitter east wind",
    "season": "spring, summer, autumn, winter",
    "topic": "Notes on, A Short History of, Recollections of, Council Minutes Concerning, Letters "
             "About, Disputes at, Improvements to, Visitors to",
}.items()}
WORDS["month"] = list(calendar.month_name)[1:]

TEMPLATES = [
    "In the {adj} {season} of {year}, {person}, {role}, {verb} {thing} near {place}.",
    "The records show that {event} troubled the town in {month} {year}.",
    "{person} later wrote that {place} was never so crowded as on market days.",
    "According to the council minutes, {n} families lived near {place} at that time.",
    "Most townspeople greeted the news with {feeling}, though a few complained loudly at {place2}.",
    "{role} kept {thing} in a back room and showed it to anyone who asked politely.",
    "The {month} entries speak mostly of {weather} and of boats kept idle in the harbour.",
    "It was {person2} who first proposed repairs to {place}, which took {n} years to approve.",
    "Children from {place} walked each morning to the schoolroom beside {place2}.",
    "A letter dated {month} {year} describes {event} in careful, unhurried detail.",
    "{person} and {person2} quarrelled for a whole {season} over who owned {thing}.",
    "Visitors often remarked on the smell of tar and salt that hung over {place}.",
    "The clerk noted that {n} barrels of herring left the north quay in a single week.",
    "Nobody remembers exactly why {place} was closed, but {event} is the usual explanation.",
    "In old age {person} liked to say that the {adj} years had taught the town patience.",
    "{role} was paid {n} shillings a month, a sum considered generous at the time.",
    "The account of {event} ends abruptly, as if the writer had been called away.",
    "By {year} the path from {place} to {place2} had been paved with flat grey stones.",
    "A sketch from that {season} shows {place} under {weather}, with a single cart on the road.",
    "The vestry accounts record that {person} {verb} {thing} at no cost to the parish.",
    "Older residents still call {place2} by its former name, though the sign was changed long ago.",
    "When {weather} kept the boats ashore, the men of {place} mended nets and told stories.",
    "{person2}, {role}, was remembered for a {adj} temper and an excellent memory for faces.",
    "The archive holds {n} letters from {person}, most of them about the price of grain.",
    "Each {season} a fair was held near {place}, and the stalls stretched as far as {place2}.",
    "The minutes for {month} {year} are brief, noting only {weather} and {event}.",
    "The papers of {person} say little about {place}, but what survives is revealing.",
    "These notes were collected by {role} and copied out by {person2} in {year}.",
]


def fill(rng: random.Random, template: str) -> str:
    """Fill one template with random words and capitalise the first letter."""
    pick = {key: rng.choice(values) for key, values in WORDS.items()}
    for key in ("person", "person2"):
        pick[key] = f"{rng.choice(WORDS['first'])} {rng.choice(WORDS['last'])}"
    pick.update(place2=rng.choice(WORDS["place"]), year=str(rng.randint(1790, 1910)),
                n=str(rng.randint(2, 40)))
    text = template.format(**pick)
    return text[0].upper() + text[1:]


def build_blocks(rng: random.Random) -> list[str | list[str]]:
    """Headings (str) and paragraphs (lists of sentences) until TARGET_CHARS is reached."""
    blocks: list[str | list[str]] = [TITLE]
    number = 0
    while len(render(blocks)) < TARGET_CHARS:
        number += 1
        blocks.append(fill(rng, f"Section {number}. {rng.choice(WORDS['topic'])} {{place}}"))
        for _ in range(rng.randint(2, 5)):
            blocks.append([fill(rng, t) for t in rng.sample(TEMPLATES, rng.randint(4, 8))])
    return blocks


def render(blocks: list[str | list[str]]) -> str:
    """Join the blocks: one blank line between headings and paragraphs."""
    return "\n\n".join(b if isinstance(b, str) else " ".join(b) for b in blocks) + "\n"


def hide_facts(blocks: list[str | list[str]]) -> None:
    """Insert each fact mid-paragraph in the first paragraph past its target fraction."""
    total, position, pending = len(render(blocks)), 0, list(FACTS)
    for block in blocks:
        if isinstance(block, list) and pending and position >= pending[0][0] * total:
            block.insert(len(block) // 2, pending.pop(0)[1])
        position += len(block if isinstance(block, str) else " ".join(block)) + 2


def main() -> None:
    blocks = build_blocks(random.Random(0))
    hide_facts(blocks)
    text = render(blocks)
    for word in RESERVED:
        assert text.count(word) == sum(fact.count(word) for _, fact in FACTS), word
    (HERE / "long_document.txt").write_text(text, encoding="utf-8", newline="\n")
    questions = json.dumps(QUESTIONS, indent=2) + "\n"
    (HERE / "questions.json").write_text(questions, encoding="utf-8", newline="\n")
    print(f"{len(text)} characters")
    for _, fact in FACTS:
        print(f"offset {text.index(fact)} ({text.index(fact) / len(text):.0%}): {fact}")


if __name__ == "__main__":
    main()
