"""What the commands share: the model options, loading the model, the configuration, reading text files, the
types that check option values, and the errors a command reports as one line."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import MEMAGENT_CHUNK_SIZE, ChunkingConfig, MemoryConfig
from ..embedded import DEFAULT_MODEL
from ..eval.tasks import parse_token_counts

if TYPE_CHECKING:
    from ..model import CompressedMemoryModel


class CommandError(Exception):
    """A failure the user can put right (a file, a model, a value found wrong only when used): `main` prints
    `compressmem COMMAND: message`, without a traceback, and exits with 1."""


class UsageError(CommandError):
    """Options that do not go together, found after parsing: `main` prints the command's usage and the message, as
    argparse does for a bad value, and exits with 2."""


# transformers' `device_map` strategies, besides a device
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --checkpoint, --revision, --config, --chunk-size, --memagent, --device, --dtype, --quiet, --debug."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"HF id or folder (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--memagent",
        action="store_true",
        help=f"MemAgent baseline: every raw chunk ({MEMAGENT_CHUNK_SIZE} tokens unless --chunk-size) read into a "
        "rewritten memory with MemAgent's prompts; always answers",
    )
    parser.add_argument(
        "--checkpoint",
        help="compressmem checkpoint: a folder or a Hub repo id (its configuration "
        "and trained parts, e.g. a gate head); --config and --chunk-size override its configuration",
    )
    parser.add_argument("--memory", help=argparse.SUPPRESS)  # release 0.1's name of --checkpoint
    parser.add_argument("--revision", help="the Hub checkpoint's branch, tag or commit (default main)")
    parser.add_argument("--config", type=Path, help="MemoryConfig JSON file")
    parser.add_argument("--chunk-size", type=positive_int, help="tokens per chunk")
    parser.add_argument(
        "--device",
        type=device,
        help="where the base model runs: cpu, cuda, cuda:1, mps, or auto "
        "(spread over the devices by accelerate); default cpu",
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="weights' dtype (default: float32; auto: the checkpoint's)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    add_debug_option(parser)
    parser.set_defaults(command_parser=parser)  # the parser whose usage a UsageError prints


def add_debug_option(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """--debug: a failure shows its full traceback. A subcommand's option leaves the top-level one's value alone
    when not given (its default is SUPPRESS), so `compressmem --debug ask ...` and `compressmem ask --debug ...`
    both work."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="on a failure, show the full traceback instead of a one-line message",
    )


def _number(kind: type, least: float, inclusive: bool, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or value < least or (value == least and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


positive_int = _number(int, 0, False, "a positive integer")
non_negative_int = _number(int, 0, True, "an integer of 0 or more")
positive_float = _number(float, 0, False, "a positive number")
non_negative_float = _number(float, 0, True, "a number of 0 or more")


def probability(text: str) -> float:
    """argparse's type for a probability in (0, 1], e.g. top-p."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text!r}")
    return value


def non_blank(text: str) -> str:
    """argparse's type for text that must say something (a question)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give some text")
    return text


def device(text: str) -> str:
    """argparse's type for --device: auto (or another of transformers' device_map strategies), or a device this
    machine has (cpu, cuda, cuda:1, mps, ...)."""
    if text in DEVICE_MAPS:
        return text
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; give cpu, cuda, cuda:1, mps or auto") from None
    if parsed.type == "cpu":
        return text
    backend = getattr(torch, parsed.type, None)
    if parsed.type == "mps":
        count = int(torch.backends.mps.is_available())
    elif backend is not None and callable(getattr(backend, "is_available", None)) and backend.is_available():
        count = backend.device_count() if callable(getattr(backend, "device_count", None)) else 1
    else:
        count = 0
    if count == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: this machine has no {parsed.type} device that PyTorch can use; give cpu, or auto"
        )
    if parsed.index is not None and parsed.index >= count:
        raise argparse.ArgumentTypeError(
            f"{text!r}: this machine has {count} {parsed.type} device"
            f"{'s' if count > 1 else ''} ({parsed.type}:0..{parsed.type}:{count - 1})"
        )
    return text


def token_counts(text: str) -> list[int]:
    """argparse's type for lengths like 8k,16k,1.75m."""
    try:
        counts = parse_token_counts(text)
    except (ValueError, OverflowError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"token counts must be positive, got {text!r}")
    return counts


def task_names(text: str) -> list[str]:
    """argparse's type for a comma-separated list of evaluation tasks."""
    from ..eval.tasks import TASKS

    tasks = [task.strip() for task in text.split(",")]
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise argparse.ArgumentTypeError(
            f"unknown task{'s' if len(unknown) > 1 else ''} {names}; the tasks are {', '.join(TASKS)}"
        )
    return tasks


def task_name(text: str) -> str:
    """argparse's type for one evaluation task."""
    tasks = task_names(text)
    if len(tasks) > 1:
        raise argparse.ArgumentTypeError(f"give one task, got {text!r}")
    return tasks[0]


def checkpoint_of(args: argparse.Namespace) -> str | None:
    """--checkpoint, or the deprecated --memory (with a warning that names the new option)."""
    if args.memory is not None:
        if args.checkpoint is not None:
            raise UsageError("give --checkpoint only (--memory is its old name).")
        print(
            f"compressmem {args.command}: --memory is deprecated and will be removed in the next release; use "
            "--checkpoint.",
            file=sys.stderr,
        )
        return args.memory
    return args.checkpoint


def memory_config(args: argparse.Namespace) -> MemoryConfig | None:
    """The configuration the options ask for, or None for the checkpoint's (or the default) one."""
    if not (args.config or args.chunk_size is not None or args.memagent):
        return None
    config = load_config(args.config) if args.config else MemoryConfig()
    if args.memagent:  # MemAgent's chunks, memory and prompts; with --config, the file's chunks, notes and prompts
        if not args.config:
            return MemoryConfig.memagent(MEMAGENT_CHUNK_SIZE if args.chunk_size is None else args.chunk_size)
        size = config.chunking.size if args.chunk_size is None else args.chunk_size
        return MemoryConfig.memagent(size, notes=config.notes, prompts=config.prompts)
    return config.replace(chunking=ChunkingConfig(args.chunk_size)) if args.chunk_size is not None else config


def load_config(path: Path) -> MemoryConfig:
    """The --config file, or a one-line error that names it and says what is wrong."""
    from ..config import ConfigError

    try:
        return MemoryConfig.load(path)
    except OSError as error:
        raise CommandError(f"cannot read --config {path}: {describe_os_error(error, name_path=False)}") from None
    except ConfigError as error:  # it names the file and what is wrong
        raise CommandError(f"--config {one_line(error)}") from None


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """`from_pretrained`'s keywords from --revision (the checkpoint's), --device (`device_map`) and --dtype;
    nothing for an option not given."""
    options: dict[str, Any] = {"revision": args.revision} if args.revision else {}
    if args.device:
        options["device_map"] = args.device
    if args.dtype:
        options["dtype"] = args.dtype
    return options


def load_model(
    args: argparse.Namespace, config: MemoryConfig | None = None, checkpoint: Any = ..., **options: Any
) -> CompressedMemoryModel:
    """The model the options name (the checkpoint of --checkpoint unless `checkpoint` is given)."""
    from safetensors import SafetensorError

    from ..model import CompressedMemoryModel

    chosen = checkpoint_of(args) if checkpoint is ... else checkpoint
    config = memory_config(args) if config is None else config
    check_model_name(args.model)
    try:
        return CompressedMemoryModel.from_pretrained(
            args.model, chosen, config, show_progress=not args.quiet, **{**load_options(args), **options}
        )
    except OSError as error:
        if type(error) is not OSError:  # compressmem's own (a checkpoint not found, ...) name what they are about
            raise
        # transformers' (and the offline default model's): no such model, the Hub unreachable, files missing
        where = "" if Path(args.model).exists() else " (no such folder here, so it was looked for on the Hub)"
        raise CommandError(f"cannot load the model {args.model}{where}: {one_line(error)}") from error
    except ValueError as error:
        if raised_by_compressmem(error):  # compressmem's checks say what is wrong themselves
            raise
        # transformers': a folder or configuration it cannot make a model of, an option the model refuses
        raise CommandError(f"cannot load the model {args.model}: {one_line(error)}") from error
    except SafetensorError as error:  # the base model's weights, or a checkpoint's trained parts
        what = f"the model {args.model}" + (f" with the checkpoint {chosen}" if chosen else "")
        raise CommandError(
            f"cannot load {what}: one of its .safetensors files is damaged or incomplete ({error}); "
            "download or save it again."
        ) from error


def check_model_name(name: str) -> None:
    """Refuse a --model that is neither a folder nor shaped like a Hub id before anything is loaded."""
    from ..hub import CHECKPOINT_CONFIG, is_hub_id

    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / CHECKPOINT_CONFIG).is_file():
            raise CommandError(
                f"--model {name} is a folder without config.json; give a model folder (config.json "
                "and the weights), a compressmem checkpoint folder or a Hub model id."
            )
        return
    if name == DEFAULT_MODEL:
        return
    if path.exists():
        raise CommandError(
            f"--model {name} is a file; give a model folder (config.json and the weights) or a Hub model id (org/name)."
        )
    if not is_hub_id(name):
        raise CommandError(
            f"--model {name}: no such folder, and not a Hub model id (org/name); give a model folder or a Hub model id."
        )


def read_text(path: Path, limit: int = -1, nonempty: bool = False) -> str:
    """A UTF-8 text file (its first `limit` characters), or a one-line error that says what is wrong; `nonempty`
    also refuses a file with no text in it (when what was read is all of it)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(limit)
    except UnicodeDecodeError as error:
        raise CommandError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); convert it to text first."
        ) from None
    except OSError as error:
        raise CommandError(f"cannot read {path}: {describe_os_error(error, name_path=False)}") from None
    if nonempty and not text.strip() and (limit < 0 or len(text) < limit):
        raise CommandError(
            f"{path} is {'only whitespace' if text else 'empty'}: there is nothing to read; give a "
            "file with text in it."
        )
    return text


_OS_HINTS = {
    "ENOENT": "check the path",
    "EACCES": "check its permissions",
    "EPERM": "check its permissions",
    "EISDIR": "give a file, not a folder",
    "ENOTDIR": "check the path",
    "ENOSPC": "free some disk space",
    "EROFS": "choose a writable place",
}


def describe_os_error(error: OSError, name_path: bool = True) -> str:
    """An OSError in one line: the path (unless not `name_path`) and the system's reason, with what to do when that
    is plain; or its message, for one raised with a message."""
    import errno

    if error.strerror is None:
        return one_line(error)
    where = f"{error.filename}: " if error.filename is not None and name_path else ""
    hint = _OS_HINTS.get(errno.errorcode.get(error.errno or 0, ""))
    return f"{where}{error.strerror}" + (f"; {hint}" if hint else "")


def raised_by_compressmem(error: BaseException) -> bool:
    """Whether compressmem's own code raised `error` (a check of what it was given), not a library it calls."""
    import traceback

    package = Path(__file__).resolve().parents[1]
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(package)


def one_line(error: BaseException) -> str:
    """An error's message on one line (transformers' and PyTorch's span several)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
