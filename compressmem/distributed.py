"""Compress one long text across processes (`accelerate launch`): each compresses its share, one bank results.

Every process streams the same text and tokenizes all of it (cheap next to compressing), so the
processes agree on the chunks without sending any. Process `r` of `n` compresses the batches
`r, r + n, r + 2n, ...` of the document and writes their blocks to its own shards of the output
folder. The processes then exchange what they wrote (a few numbers per block), check that they
read the same text into the same folder with the same model, and the main process writes the one
index. One process is the degenerate case: `CompressedMemoryModel.compress_stream` runs this code
with `ONE_PROCESS`. The chunks are compressed by the model's `BankBuilder`, as everywhere else.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .bank import BankPart, BankWriter, MemoryBank, write_index
from .chunking import check_pieces, stream_chunks
from .compression import BankBuilder
from .errors import ProcessMismatchError

logger = logging.getLogger(__name__)


class StreamCompressor(Protocol):
    """What `compress_distributed` asks of a model: `CompressedMemoryModel.compress_stream`."""

    def compress_stream(
        self,
        pieces: Iterable[str],
        directory: str | Path,
        *,
        show_progress: bool | None = None,
        shard_blocks: int = 256,
        batch_size: int = 4,
        processes: Processes = ...,
    ) -> MemoryBank: ...


@dataclass(frozen=True)
class Processes:
    """The processes sharing one compression: this one's rank, how many there are, and how they talk.

    `gather(obj)` returns every process's `obj`, in rank order, in every process; `barrier()`
    returns once every process has called it.
    """

    rank: int
    count: int
    gather: Callable[[Any], list]
    barrier: Callable[[], None]

    @classmethod
    def from_state(cls, state: PartialState) -> Processes:
        """accelerate's processes (several under `accelerate launch`, otherwise one)."""
        return cls(state.process_index, state.num_processes, lambda obj: gather_object([obj]), state.wait_for_everyone)


ONE_PROCESS = Processes(0, 1, lambda obj: [obj], lambda: None)
"""A process compressing alone, whatever launched it."""


@dataclass
class _Report:
    """What one process did and read: its part of the bank, and what every process must agree on."""

    part: BankPart
    chunks: int
    tokens: int
    digest: str
    folder: str
    model: str

    def agreement(self) -> tuple:
        return self.chunks, self.tokens, self.digest, self.folder, self.model

    def describe(self) -> str:
        return (
            f"process {self.part.rank}: {self.chunks} chunks, {self.tokens} tokens (digest {self.digest[:12]}) "
            f"into {self.folder}, model and settings {self.model}"
        )


def process_state(cpu: bool = False) -> PartialState:
    """accelerate's view of the processes: several under `accelerate launch`, one otherwise.

    They are CPU processes (talking over gloo) when `cpu` is set or no GPU is present: launched with
    `--multi_gpu` on a machine without one, accelerate would otherwise give every process a world of
    its own and each would compress the whole text.
    """
    return PartialState(cpu=cpu or not torch.cuda.is_available())


def compress_distributed(
    model: StreamCompressor,
    pieces: Iterable[str],
    directory: str | Path,
    *,
    state: PartialState | None = None,
    show_progress: bool | None = None,
    shard_blocks: int = 256,
    batch_size: int = 4,
) -> MemoryBank:
    """Compress text arriving in pieces (e.g. `text_pieces(path)`) into one bank folder, the work shared by processes.

    Call it in every process of `accelerate launch` with the same pieces and the same folder:
    each process compresses every `n`-th batch of chunks and writes its own shards, the main
    process writes the index, and every process returns the bank, opened from disk. Run once, it
    is `model.compress_stream`. `state` is accelerate's `PartialState` (default: `process_state()`);
    the progress bar shows on the main process only.
    """
    state = process_state() if state is None else state
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        raise ProcessMismatchError(
            f"{launched} processes were launched (WORLD_SIZE) but accelerate's state counts {state.num_processes}: "
            "it was set up before this call without distributed support (e.g. PartialState() on a machine "
            "without a GPU). Create it with compressmem.distributed.process_state() or PartialState(cpu=True)."
        )
    return model.compress_stream(
        pieces,
        directory,
        show_progress=show_progress,
        shard_blocks=shard_blocks,
        batch_size=batch_size,
        processes=Processes.from_state(state),
    )


def compress_into_folder(
    builder: BankBuilder,
    tokenizer: PreTrainedTokenizerBase,
    pieces: Iterable[str],
    directory: str | Path,
    processes: Processes = ONE_PROCESS,
    *,
    show_progress: bool = True,
    shard_blocks: int = 256,
    batch_size: int = 4,
) -> MemoryBank:
    """Stream `pieces` through `builder` into a bank folder, the batches of chunks shared among `processes`
    (`ONE_PROCESS` for `compress_stream`); the bank, opened from disk, in every process."""
    check_pieces(pieces)  # before the folder is made
    directory = Path(directory)
    writer = BankWriter(directory, builder.provenance(), shard_blocks, processes.rank, processes.count, resume=True)
    if writer.part.blocks:
        logger.info(
            "Resuming the interrupted compression in %s: %d blocks of process %d are already written.",
            directory,
            len(writer.part.blocks),
            processes.rank,
        )
    show = show_progress and processes.rank == 0
    report = _compress_share(builder, tokenizer, pieces, writer, processes, show, batch_size)
    reports = processes.gather(report)
    _check_agreement(reports)
    if processes.rank == 0:
        write_index(directory, [r.part for r in reports], builder.prefix(), builder.provenance())
    processes.barrier()
    return MemoryBank.load(directory)


def _compress_share(
    builder: BankBuilder,
    tokenizer: PreTrainedTokenizerBase,
    pieces: Iterable[str],
    writer: BankWriter,
    processes: Processes,
    show: bool,
    batch_size: int,
) -> _Report:
    """Stream every chunk, compress this process's batches into `writer` (skipping the blocks an interrupted
    run already wrote, once checked to come from the same text); what this process did and read."""
    digest = hashlib.sha256()
    done = tokens = 0
    description = "Compressing" if processes.count == 1 else f"Compressing ({processes.count} processes)"
    with tqdm(desc=description, unit="chunk", disable=not show) as bar:
        for number, chunks in enumerate(stream_chunks(pieces, tokenizer, builder.chunk_size, batch_size)):
            for chunk in chunks:
                digest.update(chunk.token_ids.numpy().tobytes())
                tokens += chunk.token_ids.numel()
            indices = range(done, done + len(chunks))
            for index, chunk in zip(indices, chunks):
                if writer.has(index):
                    writer.check_resumed(index, chunk.token_ids, (chunk.document, chunk.token_start, chunk.char_span))
            if number % processes.count == processes.rank and not all(writer.has(i) for i in indices):
                blocks, _ = builder.blocks(chunks, torch.device("cpu"), batch_size, bar)
                for index, block in zip(indices, blocks):
                    if not writer.has(index):
                        writer.add(block, index)
            else:
                bar.update(len(chunks))
            done += len(chunks)
    return _Report(writer.finish(), done, tokens, digest.hexdigest(), str(writer.directory.resolve()), writer.identity)


def _check_agreement(reports: list[_Report]) -> None:
    """Raise `ProcessMismatchError`, in every process alike, unless all read the same text into the same folder."""
    if all(report.agreement() == reports[0].agreement() for report in reports):
        return
    seen = "; ".join(report.describe() for report in reports)
    raise ProcessMismatchError(
        f"The {len(reports)} processes sharing this compression disagree ({seen}). Every process must read the "
        "same text into the same folder with the same model and settings: launch them with the same file, "
        "output and options."
    )
