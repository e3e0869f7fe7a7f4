"""The `compressmem` command: one subcommand per module, errors as one line instead of a traceback.

A bad option value is argparse's error (the usage and one line, exit status 2); a failure the user can put right
(a file missing, empty, not UTF-8 or damaged, a bank or checkpoint that does not fit, a model that cannot be
loaded, an output folder in use, a value the library refuses) is one line, `compressmem COMMAND: message`, exit
status 1; anything else is a bug and keeps its traceback. `--debug` shows the traceback of every failure."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback

from . import ask, compress, evaluate, train
from .options import CommandError, UsageError, add_debug_option, describe_os_error, one_line, raised_by_compressmem

COMMANDS = (ask, compress, evaluate, train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compressmem", description=__package__ and sys.modules[__package__].__doc__)
    add_debug_option(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return args.run(args)
    except (Exception, KeyboardInterrupt) as error:
        if args.debug:
            raise
        return report(error, args)


def report(error: BaseException, args: argparse.Namespace) -> int:
    """Print `error` for the user and return the exit status: one line for a failure they can put right (the usage
    too for options that do not go together), the traceback and where to report it for a bug."""
    name = " ".join(["compressmem", args.command, *([args.trainer] if getattr(args, "trainer", None) else [])])
    if isinstance(error, UsageError):
        if getattr(args, "command_parser", None) is not None:
            args.command_parser.error(str(error))  # exits with 2
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    if isinstance(error, KeyboardInterrupt):
        print(f"{name}: interrupted.", file=sys.stderr)
        return 130
    message = user_message(error)
    if message is not None:
        print(f"{name}: {message}", file=sys.stderr)
        return 1
    traceback.print_exception(error)
    print(
        f"{name}: unexpected {type(error).__name__}; this is a bug in compressmem: please report it with the "
        "command and the traceback above.",
        file=sys.stderr,
    )
    return 1


def user_message(error: BaseException) -> str | None:
    """The one-line message for a failure the user can put right, or None for a bug."""
    import torch
    from safetensors import SafetensorError

    from ..errors import BankMismatchError, CheckpointMismatchError, ConfigError, ContextError, GateHeadError

    if isinstance(
        error,
        (
            CommandError,
            ContextError,
            ConfigError,
            BankMismatchError,
            CheckpointMismatchError,
            GateHeadError,
            json.JSONDecodeError,
        ),
    ):
        return one_line(error)
    if isinstance(error, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({one_line(error)}); convert it to text first."
    if isinstance(error, OSError):
        return describe_os_error(error)
    if isinstance(error, SafetensorError):
        if "serializ" in str(error):  # safetensors' I/O errors while writing
            return (
                f"a .safetensors file could not be written ({one_line(error)}); check the path, its permissions "
                "and the free space."
            )
        return f"a .safetensors file is damaged or incomplete ({one_line(error)}); write it again."
    if isinstance(error, torch.cuda.OutOfMemoryError):  # torch.OutOfMemoryError since PyTorch 2.5
        return (
            f"out of memory on the device ({one_line(error).split('.')[0]}); use a smaller --chunk-size, another "
            "--device or --dtype bfloat16."
        )
    if isinstance(error, MemoryError):
        return "out of memory; use a smaller --chunk-size or --dtype bfloat16."
    if isinstance(error, ValueError) and raised_by_compressmem(error):
        return one_line(error)  # the library's checks of what it is given
    return None


if __name__ == "__main__":
    sys.exit(main())
