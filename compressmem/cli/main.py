"""The `compressmem` command: one subcommand per module, errors as one line instead of a traceback."""

from __future__ import annotations

import argparse
import logging
import sys

from . import ask, compress, evaluate, train

COMMANDS = (ask, compress, evaluate, train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compressmem", description=__package__ and sys.modules[__package__].__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from ..bank import BankMismatchError  # heavy imports after argument errors are reported
    from ..config import ConfigError
    from ..hub import CheckpointMismatchError

    try:
        return args.run(args)
    except (CheckpointMismatchError, BankMismatchError, ConfigError, FileNotFoundError) as error:
        raise SystemExit(f"compressmem {args.command}: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
