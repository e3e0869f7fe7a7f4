"""Compress once, ask many: answer questions over every text file of a folder, reusing saved banks.

Each `.txt` file of FOLDER is compressed into a memory bank, saved in a cache folder
(`FOLDER/.compressmem/` unless `--cache` says otherwise) as `NAME.txt.safetensors`, beside a small
manifest `NAME.txt.json` recording what the bank was built from. The next run loads the bank instead
of compressing again, but only if the manifest still matches: the file's SHA-256, the base model's
fingerprint, the full `MemoryConfig` and the gate layers. Anything else is a stale bank, rebuilt
(and saved atomically) with the reason printed; `--rebuild` forces it, e.g. after retraining a
checkpoint in place. Then every question is asked of every bank (or of the `--file` ones).

Usage:
    python examples/ask_folder.py FOLDER --question "Q1" [--question "Q2" ...] [--file NAME.txt]
    python examples/ask_folder.py FOLDER --questions examples/questions.json [--checkpoint CHECKPOINT]

Output, one line per event, each starting with the file's name:
    NAME.txt: bank compressed (8 blocks, 3,900 tokens, 0.4 s) -> FOLDER/.compressmem/NAME.txt.safetensors
    NAME.txt: bank loaded (8 blocks, 3,900 tokens) <- FOLDER/.compressmem/NAME.txt.safetensors
    NAME.txt: bank rebuilt: the file changed (8 blocks, 3,900 tokens, 0.4 s) -> ...
    NAME.txt: Q: the question
    NAME.txt: A: the answer
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from compressmem import DEFAULT_MODEL, CompressedMemoryModel, MemoryBank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of UTF-8 .txt files")
    parser.add_argument("--question", action="append", default=[], help="a question (repeatable)")
    parser.add_argument("--questions", type=Path, help="JSON file: a list of questions, as strings or as objects "
                        "with a 'question' key (examples/questions.json)")
    parser.add_argument("--file", action="append", default=[], help="ask only this file of the folder (repeatable)")
    parser.add_argument("--cache", type=Path, help="where banks are saved (default FOLDER/.compressmem)")
    parser.add_argument("--rebuild", action="store_true", help="compress again even if a saved bank matches")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face id or folder of a causal LM")
    parser.add_argument("--checkpoint", help="compressmem checkpoint, a folder or a Hub repo id (e.g. a trained "
                        "gate head)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()

    questions = args.question + (read_questions(args.questions) if args.questions else [])
    if not questions:
        parser.error("give at least one --question, or --questions FILE")
    files = select_files(args.folder, args.file)
    model = CompressedMemoryModel.from_pretrained(args.model, checkpoint=args.checkpoint, show_progress=False)
    cache = args.cache or args.folder / ".compressmem"
    for path in files:
        bank = bank_for(model, path, cache, args.rebuild)
        for question in questions:
            answer = model.answer(question, bank=bank, max_new_tokens=args.max_new_tokens)
            print(f"{path.name}: Q: {question}", flush=True)
            print(f"{path.name}: A: {answer}", flush=True)


def read_questions(path: Path) -> list[str]:
    """Questions from a JSON list of strings or of `{"question": ...}` objects."""
    items = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(items, list):
        raise SystemExit(f"{path}: expected a JSON list of questions.")
    return [item["question"] if isinstance(item, dict) else str(item) for item in items]


def select_files(folder: Path, names: list[str]) -> list[Path]:
    """The folder's .txt files, or only the named ones (each must exist)."""
    if not folder.is_dir():
        raise SystemExit(f"{folder} is not a folder.")
    if names:
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise SystemExit(f"not in {folder}: {', '.join(missing)}")
        return [folder / name for name in names]
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise SystemExit(f"{folder} holds no .txt files.")
    return files


def recipe(model: CompressedMemoryModel, text: bytes) -> dict[str, Any]:
    """Everything a saved bank depends on: the text, the base model, the configuration, the gate layers."""
    wanted = {"source_sha256": hashlib.sha256(text).hexdigest(), "model": model.fingerprint.to_dict(),
              "config": model.memory_config.to_dict(), "gate_layers": list(model.gate_layers)}
    return json.loads(json.dumps(wanted))  # as a manifest reads back, so that equal recipes compare equal


def stale_reason(saved: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why a saved bank cannot answer for the wanted recipe, or None if it can."""
    if saved.get("source_sha256") != wanted["source_sha256"]:
        return "the file changed"
    if saved.get("model", {}).get("digest") != wanted["model"]["digest"]:
        return f"built for another base model ({saved.get('model', {}).get('name')})"
    if saved.get("config") != wanted["config"] or saved.get("gate_layers") != wanted["gate_layers"]:
        return "built with another configuration"
    return None


def bank_for(model: CompressedMemoryModel, path: Path, cache: Path, rebuild: bool) -> MemoryBank:
    """The file's saved bank if it is still valid, else a new one, saved for the next run."""
    text = path.read_bytes()
    wanted = recipe(model, text)
    bank_path = cache / f"{path.name}.safetensors"
    manifest_path = cache / f"{path.name}.json"
    reason = "forced (--rebuild)" if rebuild else None
    if not rebuild and manifest_path.is_file() and bank_path.is_file():
        reason = stale_reason(json.loads(manifest_path.read_text(encoding="utf-8")), wanted)
        if reason is None:
            bank = MemoryBank.load(bank_path)
            print(f"{path.name}: bank loaded ({describe(bank)}) <- {bank_path}", flush=True)
            return bank
    started = time.perf_counter()
    bank = model.compress(text.decode("utf-8"))
    seconds = time.perf_counter() - started
    save_atomically(bank, wanted, bank_path, manifest_path)
    status = "compressed" if reason is None else f"rebuilt: {reason}"
    print(f"{path.name}: bank {status} ({describe(bank)}, {seconds:.1f} s) -> {bank_path}", flush=True)
    return bank


def save_atomically(bank: MemoryBank, manifest: dict[str, Any], bank_path: Path, manifest_path: Path) -> None:
    """Write bank then manifest, each through a temporary file: an interrupted run leaves no bank that looks valid."""
    bank_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    partial = bank_path.with_name(bank_path.name + ".partial")
    bank.save(partial)
    os.replace(partial, bank_path)
    partial = manifest_path.with_name(manifest_path.name + ".partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, manifest_path)


def describe(bank: MemoryBank) -> str:
    """How much a bank holds, for the status lines."""
    return f"{len(bank)} blocks, {bank.num_tokens:,} tokens"


if __name__ == "__main__":
    main()
