"""What the commands share: the model options, loading the model, the configuration, reading text files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import MEMAGENT_CHUNK_SIZE, ChunkingConfig, MemoryConfig
from ..embedded import DEFAULT_MODEL
from ..eval.tasks import parse_token_counts

if TYPE_CHECKING:
    from ..model import CompressedMemoryModel


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --checkpoint, --revision, --config, --chunk-size, --memagent, --device, --dtype, --quiet."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"HF id or folder (default {DEFAULT_MODEL})")
    parser.add_argument("--memagent", action="store_true", help="MemAgent baseline: read every raw chunk")
    parser.add_argument("--checkpoint", help="compressmem checkpoint: a folder or a Hub repo id (its configuration "
                        "and trained parts, e.g. a gate head); --config and --chunk-size override its configuration")
    parser.add_argument("--memory", help=argparse.SUPPRESS)  # release 0.1's name of --checkpoint
    parser.add_argument("--revision", help="the Hub checkpoint's branch, tag or commit (default main)")
    parser.add_argument("--config", type=Path, help="MemoryConfig JSON file")
    parser.add_argument("--chunk-size", type=int, help="tokens per chunk")
    parser.add_argument("--device", help="where the base model runs: cpu, cuda, cuda:1, mps, or auto (spread over "
                        "the devices by accelerate); default cpu")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights' dtype (default: float32; auto: the checkpoint's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines")


def token_counts(text: str) -> list[int]:
    """argparse's type for lengths like 8k,16k,1.75m."""
    try:
        return parse_token_counts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def checkpoint_of(args: argparse.Namespace) -> str | None:
    """--checkpoint, or the deprecated --memory (with a warning that names the new option)."""
    if args.memory is not None:
        if args.checkpoint is not None:
            raise SystemExit(f"compressmem {args.command}: give --checkpoint only (--memory is its old name).")
        print(f"compressmem {args.command}: --memory is deprecated and will be removed in the next release; use "
              "--checkpoint.", file=sys.stderr)
        return args.memory
    return args.checkpoint


def memory_config(args: argparse.Namespace) -> MemoryConfig | None:
    """The configuration the options ask for, or None for the checkpoint's (or the default) one."""
    if not (args.config or args.chunk_size or args.memagent):
        return None
    config = MemoryConfig.load(args.config) if args.config else MemoryConfig()
    if args.memagent:  # the file's notes and prompts, MemAgent's chunks and reading
        size = args.chunk_size or (config.chunking.size if args.config else MEMAGENT_CHUNK_SIZE)
        return MemoryConfig.memagent(size, notes=config.notes, prompts=config.prompts)
    return config.replace(chunking=ChunkingConfig(args.chunk_size)) if args.chunk_size else config


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """`from_pretrained`'s keywords from --revision (the checkpoint's), --device (`device_map`) and --dtype;
    nothing for an option not given."""
    options: dict[str, Any] = {"revision": args.revision} if args.revision else {}
    if args.device:
        options["device_map"] = args.device
    if args.dtype:
        options["dtype"] = args.dtype
    return options


def load_model(args: argparse.Namespace, config: MemoryConfig | None = None, checkpoint: Any = ...,
               **options: Any) -> CompressedMemoryModel:
    """The model the options name (the checkpoint of --checkpoint unless `checkpoint` is given)."""
    from ..model import CompressedMemoryModel

    chosen = checkpoint_of(args) if checkpoint is ... else checkpoint
    config = memory_config(args) if config is None else config
    return CompressedMemoryModel.from_pretrained(args.model, chosen, config, show_progress=not args.quiet,
                                                 **{**load_options(args), **options})


def read_text(path: Path, limit: int = -1) -> str:
    """A UTF-8 text file (its first `limit` characters), or a one-line error that says what is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(limit)
    except UnicodeDecodeError as error:
        raise SystemExit(f"{path} is not UTF-8 text ({error}); convert it to text first.") from None
    except OSError as error:
        raise SystemExit(f"cannot read {path}: {error.strerror}") from None
