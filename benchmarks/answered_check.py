"""How to decide that the notes answer the question: the word-level check (`reader.quotes.covers`) against a yes/no
pass of the model, on notes whose answer is known.

Notes that answer: each `niah_single` / `niah_multikey` case's needle sentence; the README's questions with the
sentences that answer them. Notes that do not: a `niah_multikey` case's distractor needle (another key), the
two-hop README question with its first hop only, and "What is the secret code for the harbour safe?" with the
lighthouse vault's sentence. The yes/no pass asks the model, under its chat template, "Notes: ... Question: ...
Do the notes answer the question? Answer yes or no." and compares the next token's probability of "Yes" and
"No". Printed: how often each check says "answered" on each kind of notes.

    OMP_NUM_THREADS=1 python benchmarks/answered_check.py --n 20 --out benchmarks/results/answered-check
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

PROMPT = "Notes: {notes}\n\nQuestion: {question}\n\nDo the notes answer the question? Answer yes or no."


def notes_sets(tokenizer, n: int) -> list[tuple[str, str, str, bool]]:
    """(kind, question, notes, whether the notes answer it)."""
    from compressmem.eval.tasks import make_cases

    sets = []
    for task in ("niah_single", "niah_multikey"):
        for case in make_cases(task, tokenizer, 4096, n):
            (start, end), = case.evidence
            sets.append((f"{task}: needle", case.question, case.context[start:end].strip(), True))
            if task == "niah_multikey":
                a, b = case.metadata["distractors"][0]
                sets.append(("niah_multikey: another key's needle", case.question, case.context[a:b].strip(), False))
    hop = "Mara Quill was born in the town of Eldermoor."
    bells = "The town of Eldermoor is famous for its copper bells."
    vault = "The secret code for the lighthouse vault is 4719283."
    sets += [("readme: answer", "What is the secret code for the lighthouse vault?", vault, True),
             ("readme: answer", "In which town was Mara Quill born?", hop, True),
             ("readme: answer", "What is the town where Mara Quill was born famous for?", f"{hop}\n{bells}", True),
             ("readme: first hop only", "What is the town where Mara Quill was born famous for?", hop, False),
             ("readme: another safe", "What is the secret code for the harbour safe?", vault, False)]
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from compressmem import CompressedMemoryModel
    from compressmem.reader.quotes import covers

    model = CompressedMemoryModel.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", show_progress=False)
    tok = model.tokenizer
    yes, no = (tok(word, add_special_tokens=False)["input_ids"][0] for word in ("Yes", "No"))
    rows: dict[str, dict[str, int]] = {}
    for kind, question, notes, answers in notes_sets(tok, args.n):
        ids = model.prompt_ids(PROMPT.format(notes=notes, question=question))
        with torch.no_grad():
            logits = model.model(ids).logits[0, -1]
        said_yes = bool(logits[yes] > logits[no])
        row = rows.setdefault(kind, {"n": 0, "answers": int(answers), "covers": 0, "model says yes": 0})
        row["n"] += 1
        row["covers"] += covers(notes, question)
        row["model says yes"] += said_yes
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["| notes | do they answer? | n | word check says answered | yes/no pass says answered |",
             "|---|---|---|---|---|"]
    lines += [f"| {kind} | {'yes' if r['answers'] else 'no'} | {r['n']} | {r['covers']} | {r['model says yes']} |"
              for kind, r in rows.items()]
    text = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(text, encoding="utf-8")
    (args.out / "counts.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
