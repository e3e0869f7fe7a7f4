"""`compressmem ask`: answer a question over a long text file or a saved bank, with the sentences it came from."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import CommandError, UsageError, add_model_options, load_model, non_blank, positive_int, read_text


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("ask", help="answer a question over a long text file")
    parser.add_argument(
        "--context",
        required=True,
        type=Path,
        help="UTF-8 text file, a .safetensors bank, or a bank folder written by compress",
    )
    parser.add_argument("--question", required=True, type=non_blank)
    parser.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        help="read the bank only if it is signed by this key: an Ed25519 public key (PEM; needs "
        "compressmem[signing]) or a team's HMAC secret file; repeat for several",
    )
    add_model_options(parser)
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--trace", action="store_true", help="print the blocks read and the notes after each read")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object: question, answer, found, sources, blocks read"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from ..bank import MemoryBank, load_key

    is_bank = args.context.suffix == ".safetensors" or args.context.is_dir()
    if args.trusted_key and not is_bank:
        raise UsageError(f"--trusted-key checks a bank's signature, but --context {args.context} is a text file.")
    trusted = [load_key(path) for path in args.trusted_key] if args.trusted_key else None  # before the model loads
    text = None if is_bank else read_text(args.context, nonempty=True)
    model = load_model(args)
    try:
        source = {"bank": MemoryBank.load(args.context, trusted_keys=trusted)} if is_bank else {"context": text}
        answer = model.answer(args.question, **source, max_new_tokens=args.max_new_tokens, return_sources=True)
    except SafetensorError as error:  # with the model loaded, only the bank's files are read
        if not is_bank:
            raise
        raise CommandError(f"the bank {args.context} is damaged ({error}); compress the text again.") from error
    trace = answer.trace
    if args.json:
        print(
            json.dumps(
                {
                    "question": args.question,
                    "answer": answer.text,
                    "found": answer.found,
                    "outcome": trace.outcome,
                    "judge": trace.judge,
                    "judge_reason": trace.judge_reason,
                    "attempts": [vars(a) for a in trace.attempts],
                    "sources": [vars(s) for s in answer.sources],
                    "blocks_read": trace.blocks_read,
                    "blocks": trace.num_blocks,
                    "missing_terms": trace.missing_terms,
                },
                indent=2,
            )
        )
    else:
        print(answer.text)
        if answer.found:
            print("\nSources:")
            for s in answer.sources:
                where = "characters" if s.exact else "in the chunk at characters"
                document = f"document {s.document}, " if s.document else ""
                print(f"  [{document}{where} {s.start}-{s.end}] {s.text!r}")
        elif answer.found is None:
            print(f"\n(read {len(trace.blocks_read)} of {trace.num_blocks} blocks; answered from the notes, unchecked)")
        elif trace.missing_terms:
            print(f"\n(the context never mentions {', '.join(trace.missing_terms)}; nothing was read)")
        elif trace.attempts:
            last = trace.attempts[-1]
            print(
                f"\n(read {len(trace.blocks_read)} of {trace.num_blocks} blocks; {len(trace.attempts)} answer(s) "
                f"written from their notes, none grounded in them: {last.answer!r} - {last.reason})"
            )
        else:
            print(
                f"\n(read {len(trace.blocks_read)} of {trace.num_blocks} blocks; no sentence in them bears on the "
                "question)"
            )
    if args.trace:
        steps = [{"block": s.block, "recall": s.recall, "output": s.output, "notes": s.notes} for s in trace.steps]
        report = {
            "blocks": trace.num_blocks,
            "read": trace.blocks_read,
            "found": trace.found,
            "judge": trace.judge,
            "steps": steps,
            "attempts": [vars(a) for a in trace.attempts],
        }
        print(json.dumps(report, indent=2), file=sys.stderr)
    return 0
