"""Which answer prompt lets SmolLM2-135M answer from its notes in words the grounding judge accepts.

The notes are the evidence sentence of each answerable question of `benchmarks/natural_questions.json` (the
first 16), so only the answer step is measured: for each prompt, how often the answer holds a gold answer
(`right`, this script's own substring rule) and how often it is right and accepted by the judge as grounded in
the notes (`grounded`). Greedy, 48 new tokens, the chat template.

    OMP_NUM_THREADS=1 python benchmarks/answer_prompt.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

PROMPTS = {
    "0.3": "Notes taken while reading a long document: {notes}\n\n{question}",
    "short": "Notes taken while reading a long document:\n{notes}\n\nUsing only these notes, answer in one short "
    "sentence: {question}",
    "0.4 (default)": "Read the notes, then answer the question with the words of the notes, in one sentence.\n\n"
    "Notes: {notes}\n\nQuestion: {question}\nAnswer:",
}


def main() -> None:
    from compressmem import CompressedMemoryModel
    from compressmem.reader import GroundingJudge

    model = CompressedMemoryModel.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", show_progress=False)
    tokenizer = model.tokenizer
    questions = json.loads((Path(__file__).parent / "natural_questions.json").read_text(encoding="utf-8"))
    questions = [q for q in questions if q["answers"]][:16]
    judge = GroundingJudge()
    print("| prompt | right | right and grounded | seconds |\n|---|---|---|---|")
    for name, template in PROMPTS.items():
        right = grounded = 0
        start = time.perf_counter()
        for q in questions:
            content = template.format(notes=q["evidence"], question=q["question"])
            inputs = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                   return_tensors="pt", return_dict=True)
            out = model.model.generate(**inputs, max_new_tokens=48, do_sample=False,
                                       pad_token_id=tokenizer.eos_token_id)
            answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            ok = any(gold.lower() in answer.lower() for gold in q["answers"])
            right += ok
            grounded += ok and judge.judge(q["question"], q["evidence"], answer).grounded
        seconds = time.perf_counter() - start
        print(f"| {name} | {right}/{len(questions)} | {grounded}/{len(questions)} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
