"""Distributed compression: processes share one document's chunks, one bank results (`compressmem.distributed`)."""

import json
import os
import random
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from compressmem import (
    BankMismatchError,
    ChunkingConfig,
    CompressedMemoryModel,
    CompressionConfig,
    GateConfig,
    MemoryBank,
    MemoryConfig,
    ReadingConfig,
)
from compressmem.bank import BankPart, BlockInfo, Entry, merge_parts
from compressmem.distributed import Processes, ProcessMismatchError, compress_distributed, compress_into_folder
from compressmem.embedded import embedded_model_folder

from .conftest import tiny_model, tiny_wrapper

CONFIG = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("select"),
                      gate=GateConfig("attention", layers=(1, 2)), reading=ReadingConfig("compressed"))
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs", "near", "river", "banks", "while",
         "seven", "old", "sailors", "sing", "of", "gold"]


@pytest.fixture(scope="module")
def document(tmp_path_factory):
    """About 3,300 tokens of seeded text: some 50 chunks of 64 tokens."""
    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS) + ("." if i % 11 == 10 else "") for i in range(3000))
    path = tmp_path_factory.mktemp("doc") / "doc.txt"
    path.write_text(text, encoding="utf-8")
    return path


def assert_same_bank(ours: MemoryBank, theirs: MemoryBank) -> None:
    assert len(ours) == len(theirs) > 1 and ours.provenance == theirs.provenance
    assert ours.fingerprint == theirs.fingerprint and torch.equal(ours.prefix_ids, theirs.prefix_ids)
    torch.testing.assert_close(ours.prefix_keys, theirs.prefix_keys)
    torch.testing.assert_close(ours.prefix_values, theirs.prefix_values)
    for mine, other in zip(ours.blocks, theirs.blocks, strict=True):
        assert torch.equal(mine.token_ids, other.token_ids) and torch.equal(mine.positions, other.positions)
        assert (mine.document, mine.token_start, mine.char_span) == (other.document, other.token_start, other.char_span)
        torch.testing.assert_close(mine.keys, other.keys)
        torch.testing.assert_close(mine.values, other.values)


def _info(start: int) -> BlockInfo:
    return BlockInfo(0, start, (start, start + 10), 64, 16, 5000)


def _entry(start: int, shard: int) -> Entry:
    return Entry(_info(start), shard, [start + 1, 0, 0, 0])


def _shard(number: int) -> dict:
    return {"file": f"blocks-{number:05d}.safetensors", "bytes": 100 + number, "sha256": str(number)}


def test_merge_lists_every_writers_blocks_in_document_order():
    late = BankPart(1, [_shard(1)], {3: _entry(192, 0), 2: _entry(128, 0)})
    early = BankPart(0, [_shard(0), _shard(2)], {0: _entry(0, 0), 1: _entry(64, 1)})
    shards, ranks, rows = merge_parts([late, early])
    assert shards == [_shard(0), _shard(2), _shard(1)]
    assert ranks == [0, 0, 1]
    assert rows == [_entry(0, 0), _entry(64, 1), _entry(128, 2), _entry(192, 2)]
    with pytest.raises(ValueError, match=r"blocks \[2\] of the document were written by no process"):
        merge_parts([early, BankPart(1, [_shard(1)], {3: _entry(192, 0)})])
    with pytest.raises(ValueError, match=r"blocks \[1\] were written by more than one process"):
        merge_parts([early, BankPart(1, [_shard(1)], {1: _entry(64, 0), 2: _entry(128, 0)})])


def thread_processes(count: int) -> list[Processes]:
    """`count` threads standing in for processes: a shared list and a barrier instead of gloo."""
    barrier = threading.Barrier(count, timeout=30)
    slots: list = [None] * count

    def make(rank: int) -> Processes:
        def gather(obj):
            slots[rank] = obj
            barrier.wait()
            seen = list(slots)
            barrier.wait()
            return seen

        return Processes(rank, count, gather, barrier.wait)

    return [make(rank) for rank in range(count)]


def pieces(text: str) -> list[str]:
    """The text in two pieces, cut before a space (so the tokens are those of the whole text)."""
    cut = text.rfind(" ", 0, len(text) // 2)
    return [text[:cut], text[cut:]]


def compress_in_threads(texts: list[str], folder) -> list:
    """Each thread compresses its text with its own copy of the same tiny model, side by side (the attention
    probe is safe for concurrent callers); the results or the errors."""
    models = [tiny_wrapper("llama", AutoTokenizer.from_pretrained(embedded_model_folder()), CONFIG) for _ in texts]
    with ThreadPoolExecutor(len(texts)) as pool:
        futures = [pool.submit(compress_into_folder, model.builder, model.tokenizer, pieces(text), folder, processes,
                               shard_blocks=4)
                   for text, model, processes in zip(texts, models, thread_processes(len(texts)), strict=True)]
        return [future.exception() or future.result() for future in futures]


def test_three_processes_build_the_bank_one_process_builds(tokenizer, document, tmp_path):
    text = document.read_text(encoding="utf-8")
    banks = compress_in_threads([text] * 3, tmp_path / "bank")
    reference = tiny_wrapper("llama", tokenizer, CONFIG).compress(text)
    for bank in banks:
        assert_same_bank(bank, reference)
    index = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert sorted({shard["rank"] for shard in index["shards"]}) == [0, 1, 2]
    again = compress_in_threads([text] * 3, tmp_path / "bank")
    assert all(isinstance(error, FileExistsError) and "already holds a memory bank" in str(error) for error in again)


def test_processes_reading_different_texts_all_refuse(tokenizer, document, tmp_path):
    text = document.read_text(encoding="utf-8")
    chunks = -(-len(tokenizer(text, add_special_tokens=False)["input_ids"]) // CONFIG.chunking.size)
    errors = compress_in_threads([text, text.rsplit(" ", 40)[0]], tmp_path / "bank")
    for error in errors:
        assert isinstance(error, ProcessMismatchError), error
        assert f"process 0: {chunks} chunks" in str(error) and "same file, output and options" in str(error)
    assert not (tmp_path / "bank" / "bank.json").exists()


def test_a_state_that_does_not_see_the_launched_processes_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ProcessMismatchError, match="2 processes were launched"):
        compress_distributed(None, iter(["text"]), tmp_path, state=SimpleNamespace(num_processes=1))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_accelerate_launch_with_two_cpu_processes_writes_one_bank(tokenizer, document, tmp_path):
    base, config = tmp_path / "base", tmp_path / "config.json"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    CONFIG.save(config)
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "HF_HOME": str(tmp_path / "hf")}  # no accelerate config file of the machine's
    reference = CompressedMemoryModel.from_pretrained(str(base), config=MemoryConfig.load(config), show_progress=False)
    expected = reference.compress(document.read_text(encoding="utf-8"))
    for output in (tmp_path / "bank", tmp_path / "bank.safetensors"):
        done = subprocess.run(
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
             str(free_port()), "-m", "compressmem.cli", "compress", str(document), "-o", str(output),
             "--model", str(base), "--config", str(config), "--quiet"],
            env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        assert done.stdout.count("compressed by 2 processes") == 1
        assert_same_bank(MemoryBank.load(output), expected)
    index = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert sorted({shard["rank"] for shard in index["shards"]}) == [0, 1]
    assert not list(tmp_path.glob("bank.safetensors.*")), "the temporary bank folder beside the file was left behind"


def test_processes_resume_an_interrupted_compression_of_the_same_count(tokenizer, document, tmp_path):
    text = document.read_text(encoding="utf-8")
    folder = tmp_path / "bank"
    compress_in_threads([text] * 3, folder)
    shards = sorted(folder.glob("blocks-*.safetensors"))
    for name in ("bank.json", "table.safetensors", "prefix.safetensors", *(p.name for p in shards[-3:])):
        (folder / name).unlink()  # as a kill before the index leaves it: the last shards unwritten
    with pytest.raises(BankMismatchError, match="made with other settings, another model or 3 processes"):
        tiny_wrapper("llama", tokenizer, CONFIG).compress_stream(pieces(text), folder, shard_blocks=4)
    banks = compress_in_threads([text] * 3, folder)
    reference = tiny_wrapper("llama", tokenizer, CONFIG).compress(text)
    for bank in banks:
        assert_same_bank(bank, reference)
    assert sorted(p.name for p in folder.glob("blocks-*")) == [p.name for p in shards]
