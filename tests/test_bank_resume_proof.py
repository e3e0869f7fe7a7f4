"""A resumed stream proves it is given the same text, with the same settings: a compression killed in a child
process is resumed to the bank an uninterrupted run writes, and refused for a shorter or altered text, or for
any setting its blocks depend on (section prefix, bits and group, chunk size), naming it with both values."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compressmem import BankMismatchError, MemoryBank, ChunkingConfig, CompressionConfig, MemoryConfig, ReadingConfig
from compressmem.config import DEFAULT_SECTION_HEADER, PromptConfig

from .conftest import tiny_wrapper

ROOT = Path(__file__).resolve().parent.parent
KV = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("select", ratio=4),
                  reading=ReadingConfig("compressed"))
SHARDS = dict(shard_blocks=3, batch_size=2)
KILL_AFTER = 3  # shards written before the child is killed

# The child streams the text's pieces into the folder; after the first 12 pieces the piece source waits (as a slow
# disk or network would), and the parent kills the child there with SIGKILL: no `finally`, no cleanup.
CHILD = """
import sys, time
from compressmem.embedded import embedded_model_folder
from transformers import AutoTokenizer
from tests.conftest import tiny_wrapper
from tests.test_bank_resume_proof import KV, SHARDS, pieces

text, folder = open(sys.argv[1], encoding="utf-8").read(), sys.argv[2]
def slow():
    for number, piece in enumerate(pieces(text)):
        if number == 12:
            time.sleep(600)
        yield piece
wrapper = tiny_wrapper("llama", AutoTokenizer.from_pretrained(embedded_model_folder()), KV)
wrapper.compress_stream(slow(), folder, **SHARDS)
"""


def pieces(text, size=400):
    """`text` in pieces of about `size` characters, each cut before a space."""
    start = 0
    while start < len(text):
        cut = text.find(" ", start + size)
        end = len(text) if cut < 0 else cut
        yield text[start:end]
        start = end


@pytest.fixture(scope="module")
def text(essay_text):
    return essay_text[:9000]


@pytest.fixture(scope="module")
def killed(text, tmp_path_factory):
    """A folder whose compression was killed (SIGKILL, in a child process) after `KILL_AFTER` shards."""
    where = tmp_path_factory.mktemp("killed")
    (where / "text.txt").write_text(text, encoding="utf-8")
    folder = where / "bank"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(where / "text.txt"), str(folder)], cwd=ROOT, env=env,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(list(folder.glob("blocks-*.safetensors"))) < KILL_AFTER:
        if child.poll() is not None:
            pytest.fail(f"the child ended before it was killed: {child.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("the child wrote no shards within 300 s")
        time.sleep(0.1)
    time.sleep(0.5)  # it is waiting for its next piece by now
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    assert not (folder / "bank.json").exists()
    return folder


@pytest.fixture(scope="module")
def wrapper(tokenizer):
    return tiny_wrapper("llama", tokenizer, KV)


@pytest.fixture
def folder(killed, tmp_path):
    """A copy of the killed compression's folder, for one test to resume."""
    return Path(shutil.copytree(killed, tmp_path / "bank"))


def _block_ends(folder):
    """The character span end of every block the interrupted run wrote, by block index."""
    from safetensors import safe_open

    ends = {}
    for shard in sorted(folder.glob("blocks-*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for row in json.loads(handle.metadata()["blocks"]):
                ends[row[0]] = row[4]
    return ends


def _files(folder):
    """Every file of a bank folder as read back: a safetensors file's metadata and tensors (its header's key order
    is not fixed), the index's JSON."""
    from safetensors import safe_open

    read = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".safetensors":
            read[path.name] = json.loads(path.read_text())
            continue
        with safe_open(str(path), framework="pt") as handle:
            read[path.name] = (handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()})
    return read


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_the_same_text_resumes_to_the_bank_an_uninterrupted_run_writes(wrapper, text, folder, tmp_path):
    whole = tmp_path / "whole"
    wrapper.compress_stream(pieces(text), whole, **SHARDS)
    resumed = wrapper.compress_stream(pieces(text), folder, **SHARDS)
    assert resumed.infos.table.equal(MemoryBank.load(whole).infos.table)
    assert json.loads((folder / "bank.json").read_text())["seal"] == json.loads((whole / "bank.json").read_text())[
        "seal"]
    resumed_files, whole_files = _files(folder), _files(whole)
    assert resumed_files.keys() == whole_files.keys()
    for name in whole_files:  # every shard, the table, the prefix and the kept gate index: the same metadata and tensors
        assert _same(resumed_files[name], whole_files[name]), name
    assert not (folder / "stream.json").exists()


def test_a_text_cut_after_the_written_blocks_end_is_refused(wrapper, text, folder):
    ends = _block_ends(folder)
    assert len(ends) >= 2 * KILL_AFTER
    # the text cut where a written block ends, before a space: every chunk of the cut text matches a written block
    cut = next(ends[i] for i in sorted(ends)[:-1][::-1] if text[ends[i]] == " ")
    with pytest.raises(BankMismatchError, match=r"interrupted compression of another text: it holds blocks \d+\.\.\d+ "
                                                r".* beyond the end of the text given now.*new folder"):
        wrapper.compress_stream(pieces(text[:cut]), folder, **SHARDS)
    assert not (folder / "bank.json").exists()


def test_an_altered_text_is_refused_naming_the_block(wrapper, text, folder):
    ends = _block_ends(folder)
    at = ends[1] - 20
    altered = text[:at] + text[at:at + 12].swapcase() + text[at + 12:]
    with pytest.raises(BankMismatchError, match=r"another text: its block 1 \(tokens 64\.\.128, characters "):
        wrapper.compress_stream(pieces(altered), folder, **SHARDS)


@pytest.mark.parametrize(("setting", "change", "then", "now"), [
    ("section prefix", dict(prompts=PromptConfig(section_header="Another header:\n")), DEFAULT_SECTION_HEADER[:20],
     "Another header"),
    ("compression.bits", dict(compression=CompressionConfig("select", ratio=4, bits=8, group=16)), "16", "8"),
    ("compression.group", dict(compression=CompressionConfig("select", ratio=4, bits=8, group=16)), "None", "16"),
    ("chunking.size", dict(chunking=ChunkingConfig(32)), "64", "32"),
])
def test_a_resume_with_another_setting_is_refused_naming_it_with_both_values(tokenizer, text, folder, setting, change,
                                                                            then, now):
    other = tiny_wrapper("llama", tokenizer, KV.replace(**change))
    with pytest.raises(BankMismatchError, match="made with other settings") as refused:
        other.compress_stream(pieces(text), folder, **SHARDS)
    message = str(refused.value)
    named = message[message.index(setting):]
    assert then in named and now in named.split(" then, ", 1)[1]
    assert "new folder" in message
