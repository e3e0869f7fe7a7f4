"""`compressmem ask|compress`: answer a question over a long file, or compress it into a bank."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import MemoryConfig
from .embedded import DEFAULT_MODEL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compressmem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ask = commands.add_parser("ask", help="answer a question over a long text file")
    ask.add_argument("--context", required=True, type=Path, help="UTF-8 text file, or a .safetensors bank")
    ask.add_argument("--question", required=True)
    _common(ask)
    ask.add_argument("--max-new-tokens", type=int, default=64)
    ask.add_argument("--trace", action="store_true", help="print the blocks read and the working memory")

    compress = commands.add_parser("compress", help="compress a long text file into a reusable memory bank")
    compress.add_argument("file", type=Path)
    compress.add_argument("-o", "--output", required=True, type=Path)
    _common(compress)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from .model import CompressedMemoryModel  # heavy import after argument errors are reported

    config = _memory_config(args)
    source = args.file if args.command == "compress" else args.context
    text = None if source.suffix == ".safetensors" else _read_text(source)  # fail before loading a model
    model = CompressedMemoryModel.from_pretrained(args.model, config=config, show_progress=not args.quiet)
    if args.command == "compress":
        bank = model.compress(text)
        bank.save(args.output)
        print(f"{args.output}: {len(bank)} blocks, {bank.num_tokens} tokens, {bank.nbytes / 2**20:.1f} MiB")
        return 0
    return _ask(model, args, text)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"HF id or folder (default {DEFAULT_MODEL})")
    parser.add_argument("--memagent", action="store_true", help="MemAgent baseline: read every raw chunk")
    parser.add_argument("--config", type=Path, help="MemoryConfig JSON file")
    parser.add_argument("--chunk-size", type=int, help="tokens per chunk")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def _memory_config(args: argparse.Namespace) -> MemoryConfig:
    settings = MemoryConfig.load(args.config).to_dict() if args.config else {}
    if args.chunk_size:
        settings["chunk_size"] = args.chunk_size
    return MemoryConfig.memagent(**settings) if args.memagent else MemoryConfig.from_dict(settings)


def _ask(model, args: argparse.Namespace, text: str | None) -> int:
    from .bank import MemoryBank

    source = {"memory": MemoryBank.load(args.context)} if text is None else {"context": text}
    inputs = model.tokenizer.apply_chat_template([{"role": "user", "content": args.question}],
                                                 add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, **source, max_new_tokens=args.max_new_tokens, do_sample=False,
                         return_dict_in_generate=True)
    answer = model.tokenizer.decode(out.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(answer.strip())
    if args.trace:
        trace = out.trace[0]
        steps = [{"block": s.block, "recall": s.recall, "memory": s.memory} for s in trace.steps]
        print(json.dumps({"blocks": trace.num_blocks, "read": trace.blocks_read, "steps": steps}, indent=2),
              file=sys.stderr)
    return 0


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SystemExit(f"{path} is not UTF-8 text ({error}); convert it to text first.") from None
    except OSError as error:
        raise SystemExit(f"cannot read {path}: {error.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
