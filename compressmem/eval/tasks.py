"""The task registry: build `n` seeded cases of a task at a target length, finding the data they need."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from .cases import EvalCase
from .haystack import load_haystack
from .hotpotqa import hotpotqa
from .niah import (
    absent,
    absent_related,
    niah_distractor,
    niah_multikey,
    niah_multiquery,
    niah_multivalue,
    niah_paraphrase,
    niah_single,
)
from .variable_tracking import variable_tracking

HAYSTACK_TASKS = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "absent": absent,
    "variable_tracking": variable_tracking,
    "niah_paraphrase": niah_paraphrase,
    "niah_distractor": niah_distractor,
    "absent_related": absent_related,
}
TASKS = (*HAYSTACK_TASKS, "hotpotqa")
HAYSTACK_FILE = "pg_essays.json"
HOTPOTQA_FILE = "hotpotqa_dev_60.json"


def default_data_dir() -> Path | None:
    """`$COMPRESSMEM_DATA`, else a `shared/data` folder beside the working directory or the source tree."""
    candidates = [
        os.environ.get("COMPRESSMEM_DATA"),
        Path.cwd().parent / "shared" / "data",
        Path(__file__).resolve().parents[3] / "shared" / "data",
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), None)


def make_cases(
    task: str,
    tokenizer: PreTrainedTokenizerBase,
    length: int,
    n: int,
    seed: int = 0,
    *,
    haystack: str | Path | None = None,
    hotpotqa_file: str | Path | None = None,
    first: int = 0,
) -> list[EvalCase]:
    """`n` cases of `task` at `length` tokens, as a list (see `iter_cases`, which makes them one at a time)."""
    return list(
        iter_cases(task, tokenizer, length, n, seed, haystack=haystack, hotpotqa_file=hotpotqa_file, first=first)
    )


def iter_cases(
    task: str,
    tokenizer: PreTrainedTokenizerBase,
    length: int,
    n: int,
    seed: int = 0,
    *,
    haystack: str | Path | None = None,
    hotpotqa_file: str | Path | None = None,
    first: int = 0,
) -> Iterator[EvalCase]:
    """`n` cases of `task` at `length` tokens, made as they are asked for (one case's context in memory at a
    time); the same arguments always give the same cases.

    Cases are numbered: `first` skips the first ones, so that e.g. training cases (from 20 on) never
    repeat the evaluation's (0 to 19) for the same seed.

    `haystack` (the text itself as a str, or a `Path` to RULER's JSON or a text file) feeds the
    needle and variable tracking tasks; `hotpotqa_file` is any file in HotpotQA's layout. Both default to the files in
    `default_data_dir()`.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; the tasks are {list(TASKS)}.")
    if isinstance(length, bool) or not isinstance(length, int) or length < 64:
        raise ValueError(f"length must be a token count of at least 64, got {length!r}.")
    if task == "hotpotqa":
        path = _data_file(hotpotqa_file, HOTPOTQA_FILE, "--hotpotqa-file / hotpotqa_file")
        return (hotpotqa(tokenizer, path, length, seed, i) for i in range(first, first + n))
    text = haystack if isinstance(haystack, str) else load_haystack(_data_file(haystack, HAYSTACK_FILE, "--haystack"))
    return (HAYSTACK_TASKS[task](tokenizer, text, length, seed, i) for i in range(first, first + n))


def _data_file(given: str | Path | None, name: str, option: str) -> Path:
    if given is not None:
        path = Path(given)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; {option} takes a file ({name} or one in its layout).")
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist.")
        return path
    folder = default_data_dir()
    if folder is None or not (folder / name).is_file():
        raise FileNotFoundError(f"No {name} found (looked in $COMPRESSMEM_DATA and ../shared/data); pass {option}.")
    return folder / name


def parse_token_counts(text: str) -> list[int]:
    """'8k,16k,1.75m' -> [8192, 16384, 1835008]: k and m are binary multiples, as context lengths are."""
    counts = []
    for item in text.split(","):
        item = item.strip().lower()
        scale = {"k": 2**10, "m": 2**20}.get(item[-1:], 1)
        try:
            counts.append(int(float(item[:-1] if scale > 1 else item) * scale))
        except ValueError:
            raise ValueError(f"{item!r} is not a token count like 8k, 32768 or 1.75m") from None
    return counts
