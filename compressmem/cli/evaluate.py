"""`compressmem eval`: seeded long-context tasks, side by side across modes."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import MEMAGENT_CHUNK_SIZE, MEMAGENT_NOTES_TOKENS
from .options import CommandError, UsageError, add_model_options, load_model, positive_int, task_names, token_counts


def add_parser(commands: argparse._SubParsersAction) -> None:
    from ..eval.tasks import TASKS

    parser = commands.add_parser("eval", help="seeded long-context tasks, side by side across modes")
    add_model_options(parser)
    parser.add_argument(
        "--task", default="niah_single", type=task_names, help="comma-separated tasks: " + ",".join(TASKS)
    )
    parser.add_argument("--lengths", default="8k,16k,32k", type=token_counts, help="e.g. 8k,16k,32k or 1.75m")
    parser.add_argument("--n", type=positive_int, default=50, help="cases per task and length")
    parser.add_argument(
        "--modes",
        default="default,memagent,full",
        help="comma-separated: default, memagent, oracle (perfect gate), full (plain generate over the whole context)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path, help="folder for cases.jsonl, summary.md and plots")
    parser.add_argument("--max-new-tokens", type=positive_int, default=48)
    parser.add_argument(
        "--memagent-chunk-size",
        type=positive_int,
        default=MEMAGENT_CHUNK_SIZE,
        help=f"chunk size of the MemAgent mode (default {MEMAGENT_CHUNK_SIZE}, MemAgent's own)",
    )
    parser.add_argument(
        "--memagent-memory-tokens",
        type=positive_int,
        default=MEMAGENT_NOTES_TOKENS,
        help=f"the MemAgent mode's memory, in tokens (default {MEMAGENT_NOTES_TOKENS}, MemAgent's own); a read "
        "needs the chunk plus twice the memory, so a model with a shorter window needs less",
    )
    parser.add_argument(
        "--haystack",
        type=Path,
        help="haystack for needle and variable tracking tasks "
        "(RULER's pg_essays.json or a text file); default ../shared/data",
    )
    parser.add_argument("--hotpotqa-file", type=Path, help="HotpotQA-layout JSON; default ../shared/data")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..config import MemoryConfig, NotesConfig
    from ..eval import markdown, plot, run_eval, summarize
    from ..eval.runner import MODES

    modes = [m.strip() for m in args.modes.split(",")]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        raise UsageError(
            f"argument --modes: unknown mode{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; the modes are {', '.join(MODES)}"
        )
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CommandError("plots need matplotlib: pip install 'compressmem[eval]', or pass --no-plots.") from None
    model = load_model(args)
    records = run_eval(
        model,
        args.task,
        args.lengths,
        args.n,
        modes,
        args.seed,
        args.out,
        max_new_tokens=args.max_new_tokens,
        haystack=args.haystack,
        hotpotqa_file=args.hotpotqa_file,
        show_progress=not args.quiet,
        memagent=MemoryConfig.memagent(
            args.memagent_chunk_size, notes=NotesConfig("rewrite", max_tokens=args.memagent_memory_tokens)
        ),
    )
    rows = summarize(records)
    summary = markdown(rows)
    (args.out / "summary.md").write_text(summary, encoding="utf-8")
    if not args.no_plots:
        plot(rows, args.out)
    print(summary)
    return 0
