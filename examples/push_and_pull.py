"""Push a compressmem checkpoint to the Hugging Face Hub, then pull it back by its repo id alone.

Usage:
    hf auth login                      # once, with a token that can write to your namespace
    python examples/push_and_pull.py your-name/smollm2-135m-gate [--private] [--revision BRANCH]

The checkpoint pushed is the gate head trained for SmolLM2-135M-Instruct that ships with compressmem:
the repo gets its configuration, weights and a generated model card, never the base model's weights.
Pulling needs only the repo id: the base model's id is read from the checkpoint. The download is
cached, so the second load works offline (`HF_HUB_OFFLINE=1`). `HF_ENDPOINT` points the script at
another Hub-compatible server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compressmem import DEFAULT_MODEL, CompressedMemoryModel
from compressmem.checkpoints import SMOLLM2_GATE

DOCUMENT = Path(__file__).resolve().parent / "long_document.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo_id", help="the model repo to create or update, e.g. your-name/smollm2-135m-gate")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="push to (and pull from) this branch instead of main")
    parser.add_argument("--question", default="What is the secret code for the lighthouse vault?")
    parser.add_argument("--document", type=Path, default=DOCUMENT)
    args = parser.parse_args()

    model = CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, checkpoint=SMOLLM2_GATE)
    url = model.push_to_hub(args.repo_id, private=args.private, revision=args.revision,
                            commit_message="Gate head for SmolLM2-135M-Instruct")
    print(f"pushed: {url}")

    pulled = CompressedMemoryModel.from_pretrained(args.repo_id, revision=args.revision)
    print(f"pulled: base {pulled.base_name}, gate {pulled.memory_config.gate.kind}")
    print(f"answer: {pulled.answer(args.question, context=args.document.read_text(encoding='utf-8'))}")


if __name__ == "__main__":
    main()
