"""Seconds per question over one bank, first question (which builds the gate's index of the bank) apart from
the next ones (the index kept with the bank), with the default settings of whichever compressmem is imported,
so two releases can be compared on the same cases:

    python benchmarks/question_time.py --length 32k --questions 4
    PYTHONPATH=/path/to/older/checkout python benchmarks/question_time.py --length 32k --questions 4
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", default="32k")
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import compressmem
    from compressmem import DEFAULT_MODEL, CompressedMemoryModel
    from compressmem.eval import make_cases, parse_token_counts

    length = parse_token_counts(args.length)[0]
    model = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, show_progress=False)
    cases = make_cases("niah_multiquery", model.tokenizer, length, 1, args.seed)
    case = cases[0]
    bank = model.compress(case.context)
    keys = case.metadata["keys"]
    pairs = list(zip(keys, case.answers))[: args.questions]  # one needle a question, its key and its number
    questions = [f"What is the special magic number for {key} mentioned in the provided text?" for key, _ in pairs]
    seconds, answers = [], []
    for question in questions:
        start = time.perf_counter()
        answers.append(model.answer(question, bank=bank, max_new_tokens=48))
        seconds.append(time.perf_counter() - start)
    print(f"compressmem {compressmem.__version__}, {length} tokens, {len(bank)} blocks")
    right = sum(number in answer for (_, number), answer in zip(pairs, answers))
    print(f"first question: {seconds[0]:.1f} s; next {len(seconds) - 1}: median {statistics.median(seconds[1:]):.1f} s; "
          f"right {right}/{len(pairs)}")
    for question, answer, spent in zip(questions, answers, seconds):
        print(f"  {spent:6.1f} s  {question} -> {answer}")


if __name__ == "__main__":
    main()
