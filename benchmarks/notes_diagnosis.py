"""Why the notes stayed empty: what the model writes when it reads the block that holds the answer, and what each
notes rule keeps of it.

For every question, the block (or blocks) holding its answer is read alone, with empty notes, exactly as the
reader reads it (default settings, greedy). Counted per question set:
- `said NONE`: the output declines ("NONE", "not mentioned", ...);
- `answer in output`: the model's own output holds the answer;
- `0.2 rule kept`: release 0.2's rule (the output's first line, kept when at least 80% of its new words occur
  in the section) kept a note holding the answer; `0.2 rule dropped`: the output held the answer and that
  rule threw it away, or kept a line without it;
- `now kept`: the sentence rule now (`reader.quotes.find_quote`, the neighbouring chunk completing a cut
  sentence) kept a note holding the answer, and how often that sentence was the one the output pointed to.
Question sets: the README's questions over `examples/long_document.txt` (the second hop read with the first
hop's sentence as notes, as the reader does), and `--n` cases of `niah_single` and `niah_multikey` at
`--length` tokens.

    OMP_NUM_THREADS=1 python benchmarks/notes_diagnosis.py --length 4k --n 20 --out benchmarks/results/notes-diagnosis
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_WORD = re.compile(r"\w+")


def release_02_rule(output: str, section: str, question: str) -> str:
    """Release 0.2's note: the output's first line, when at least 80% of its new words (not in the question, longer
    than one character) occur in the section; else nothing."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    note = lines[0] if lines else ""
    if not note or note.upper().startswith("NONE"):
        return ""
    asked = set(_WORD.findall(question.lower()))
    words = [w for w in _WORD.findall(note.lower()) if len(w) > 1 and w not in asked]
    vocabulary = set(_WORD.findall(section.lower()))
    grounded = sum(w in vocabulary for w in words) / len(words) if words else 0.0
    return note if grounded >= 0.8 else ""


def items(base, length: int, n: int):
    """(set, question, answers, bank, blocks to read in order: the last one is diagnosed) for every read."""
    from compressmem.eval.tasks import make_cases

    document = (ROOT / "examples" / "long_document.txt").read_text(encoding="utf-8")
    bank = base.compress(document)
    for q in json.loads((ROOT / "examples" / "questions.json").read_text(encoding="utf-8")):
        start = document.find(q["answers"][0])
        yield "readme", q["question"], q["answers"], bank, bank.blocks_overlapping([(start, start + 1)])[:1]
    first, second = document.find("Mara Quill was born"), document.find("copper bells")  # the hop, then the answer
    yield ("readme, second hop", "What is the town where Mara Quill was born famous for?", ["copper bells"], bank,
           bank.blocks_overlapping([(first, first + 1)]) + bank.blocks_overlapping([(second, second + 1)]))
    for task in ("niah_single", "niah_multikey"):
        for case in make_cases(task, base.tokenizer, length, n):
            case_bank = base.compress(case.context)
            yield task, case.question, list(case.answers), case_bank, case_bank.blocks_overlapping(list(case.evidence))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", default="4k")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from compressmem import CompressedMemoryModel, MemoryConfig, ReadingConfig
    from compressmem.eval.tasks import parse_token_counts
    from compressmem.reader.quotes import refuses

    base = CompressedMemoryModel.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", show_progress=False)
    reader = base.with_config(MemoryConfig(gate=None, reading=ReadingConfig(until="all")), show_progress=False).reasoner
    args.out.mkdir(parents=True, exist_ok=True)
    counts: dict = defaultdict(lambda: defaultdict(int))
    with open(args.out / "reads.jsonl", "w", encoding="utf-8") as sink:
        for name, question, answers, bank, blocks in items(base, parse_token_counts(args.length)[0], args.n):
            block = blocks[-1]
            trace = reader.run([question], [bank.subset(blocks)], show_progress=False)[0]
            step = trace.steps[-1]
            section = base.tokenizer.decode(bank.token_ids(block), skip_special_tokens=True)
            old = release_02_rule(step.output, section, question)
            new = step.source.text if step.source else ""
            holds = {key: any(a.lower() in text.lower() for a in answers)
                     for key, text in (("output", step.output), ("old", old), ("new", new))}
            row = counts[name]
            row["reads"] += 1
            row["said NONE"] += refuses(step.output)
            row["answer in output"] += holds["output"]
            row["0.2 rule kept"] += holds["old"]
            row["0.2 rule dropped"] += holds["output"] and not holds["old"]
            row["now kept"] += holds["new"]
            row["now kept, pointed to by the output"] += holds["new"] and step.matched
            sink.write(json.dumps({"set": name, "question": question, "answers": answers, "block": block,
                                   "output": step.output, "release_02_note": old, "note": new,
                                   "matched": step.matched}) + "\n")
            print(name, holds, repr(step.output[:90]), flush=True)
    columns = ["reads", "said NONE", "answer in output", "0.2 rule kept", "0.2 rule dropped", "now kept",
               "now kept, pointed to by the output"]
    lines = ["| set | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(str(row[c]) for c in columns) + " |" for name, row in counts.items()]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
