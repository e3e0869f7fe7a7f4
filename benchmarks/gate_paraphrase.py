"""Evidence recall of the gates for questions worded unlike the text that answers them.

Over `examples/long_document.txt` (chunks of 512 tokens, the default), each question below paraphrases one
sentence of the document (the only sentence of its kind there); a gate recalls the evidence at k when a block
holding that sentence is among its k best blocks. Gates:

- `lexical`: BM25 (the default gate);
- `semantic`: BM25 fused with sentence-embedding similarity by reciprocal rank (`GateConfig("semantic")`, BM25's
  term weighted `LEXICAL_WEIGHT`);
- `semantic-rrf-equal`: the same fusion with BM25's term weighted as the embeddings';
- `semantic-only`: the embeddings alone (no BM25 term).

Printed: recall@1/@2/@4 per gate, the time to score one question (median, gate prompt = the question), and the
one-off time to build each gate's index of the bank (the embedder's load, once per process, timed apart).

    python benchmarks/gate_paraphrase.py [--threads 1] [--verbose]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

DOCUMENT = Path(__file__).resolve().parents[1] / "examples" / "long_document.txt"
# (question, the sentence of the document that answers it)
QUESTIONS = [
    ("Which number opens the lighthouse vault?", "The secret code for the lighthouse vault is 4719283."),
    ("Where does Mara Quill come from?", "Mara Quill was born in the town of Eldermoor."),
    ("What is Eldermoor renowned for?", "The town of Eldermoor is famous for its copper bells."),
    (
        "How much did the harbourmaster earn each month?",
        "The harbourmaster was paid 11 shillings a month, a sum considered generous at the time.",
    ),
    (
        "How many households were there around the Mill Road?",
        "According to the council minutes, 33 families lived near the Mill Road at that time.",
    ),
    (
        "How many people were living close to the toll bridge?",
        "According to the council minutes, 28 families lived near the toll bridge at that time.",
    ),
    (
        "Why was the chalk quarry shut down?",
        "Nobody remembers exactly why the chalk quarry was closed, but a strike at the net lofts is the usual "
        "explanation.",
    ),
    (
        "What is usually blamed for shutting the village green?",
        "Nobody remembers exactly why the village green was closed, but a winter of heavy snow is the usual "
        "explanation.",
    ),
    (
        "Who suggested fixing the Crown and Anchor inn?",
        "It was Jonah Varley who first proposed repairs to the Crown and Anchor inn, which took 6 years to approve.",
    ),
    (
        "How long did approval take for mending the rope walk?",
        "It was Osric Varley who first proposed repairs to the rope walk, which took 3 years to approve.",
    ),
    (
        "What was Heron Street called before it was renamed?",
        "Older residents still call Heron Street by its former name, though the sign was changed long ago.",
    ),
    (
        "What object did Petra Pellham and Bram Pellham argue about?",
        "Petra Pellham and Bram Pellham quarrelled for a whole spring over who owned a broken church clock.",
    ),
    (
        "Where did pupils living by the chalk quarry go to school?",
        "Children from the chalk quarry walked each morning to the schoolroom beside the north quay.",
    ),
    (
        "Who transcribed the papers the apothecary gathered, and when?",
        "These notes were collected by the apothecary and copied out by Edith Stroud in 1838.",
    ),
]
KS = (1, 2, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk", type=int, default=512, help="tokens per block")
    parser.add_argument("--verbose", action="store_true", help="print every question's gold and top-4 blocks")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from compressmem import ChunkingConfig, CompressedMemoryModel, GateConfig, MemoryConfig
    from compressmem.embedded import embedded_model_folder
    from compressmem.gate import LexicalGate, SemanticGate
    from compressmem.gate.semantic import load_embedder

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    text = DOCUMENT.read_text(encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_folder())
    config = MemoryConfig(chunking=ChunkingConfig(args.chunk), gate=GateConfig("semantic"))
    model = CompressedMemoryModel.from_pretrained(str(embedded_model_folder()), config=config, show_progress=False)
    bank = model.compress(text, show_progress=False)  # token ids only: no gate here reads KV
    gold = []
    for _, sentence in QUESTIONS:
        assert text.count(sentence) == 1, sentence
        start = text.index(sentence)
        gold.append(set(bank.blocks_overlapping([(start, start + len(sentence))])))
    print(
        f"{DOCUMENT.name}: {len(bank)} blocks of {args.chunk} tokens, {len(QUESTIONS)} paraphrased questions, "
        f"{torch.get_num_threads()} torch threads"
    )

    start = time.perf_counter()
    load_embedder(None)
    print(f"embedder load (once per process): {time.perf_counter() - start:.1f} s")
    gates = {
        "lexical": LexicalGate(tokenizer),
        "semantic": SemanticGate(tokenizer),
        "semantic-rrf-equal": SemanticGate(tokenizer, lexical_weight=1.0),
        "semantic-only": SemanticGate(tokenizer, lexical_weight=0.0),
    }
    print(f"{'gate':<18} {'index build':>11} " + " ".join(f"{f'recall@{k}':>9}" for k in KS) + f" {'ms/question':>12}")
    for name, gate in gates.items():
        start = time.perf_counter()
        index = gate.index(bank)  # the variants re-use the embeddings `semantic` built (held by the bank)
        build = time.perf_counter() - start
        hits = dict.fromkeys(KS, 0)
        seconds = []
        for (question, _), answer in zip(QUESTIONS, gold):
            start = time.perf_counter()
            scores = gate.score(None, [question], index)[0]
            seconds.append(time.perf_counter() - start)
            top = scores.topk(max(KS)).indices.tolist()
            for k in KS:
                hits[k] += bool(answer & set(top[:k]))
            if args.verbose:
                print(f"  {name}: {question!r} gold {sorted(answer)} top {top}")
        recalls = " ".join(f"{hits[k] / len(QUESTIONS):>9.2f}" for k in KS)
        print(f"{name:<18} {build:>9.2f} s {recalls} {1000 * statistics.median(seconds):>12.1f}")


if __name__ == "__main__":
    main()
