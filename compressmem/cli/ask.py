"""`compressmem ask`: answer a question over a long text file or a saved bank."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import add_model_options, load_model, read_text


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("ask", help="answer a question over a long text file")
    parser.add_argument("--context", required=True, type=Path,
                        help="UTF-8 text file, a .safetensors bank, or a bank folder written by compress")
    parser.add_argument("--question", required=True)
    add_model_options(parser)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--trace", action="store_true", help="print the blocks read and the notes after each read")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bank import MemoryBank

    if not args.question.strip():
        raise SystemExit("compressmem ask: --question is empty; ask a question.")
    is_bank = args.context.suffix == ".safetensors" or args.context.is_dir()
    text = None if is_bank else read_text(args.context)
    model = load_model(args)
    source = {"bank": MemoryBank.load(args.context)} if is_bank else {"context": text}
    inputs = model.tokenizer.apply_chat_template([{"role": "user", "content": args.question}],
                                                 add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, **source, max_new_tokens=args.max_new_tokens, do_sample=False,
                         return_dict_in_generate=True)
    answer = model.tokenizer.decode(out.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(answer.strip())
    if args.trace:
        trace = out.trace[0]
        steps = [{"block": s.block, "recall": s.recall, "notes": s.notes} for s in trace.steps]
        print(json.dumps({"blocks": trace.num_blocks, "read": trace.blocks_read, "steps": steps}, indent=2),
              file=sys.stderr)
    return 0
