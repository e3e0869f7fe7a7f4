"""A sealed bank whose format version was lowered to an unsealed one (to skip the seal) is refused, naming the edit,
whatever else was edited with it (provenance, fingerprint), in a folder and in a single file."""

import json

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compressmem import BankMismatchError, ChunkingConfig, CompressionConfig, MemoryBank, MemoryConfig, ReadingConfig

from .conftest import tiny_wrapper

KV = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("select", ratio=4),
                  reading=ReadingConfig("compressed"))
TEXT = "The vault code is 4719283, said the keeper. Bakers rise before dawn to knead bread. " * 8
REFUSED = "claims bank format [12], which has no seal, but holds the seal.*version was edited to skip the seal"


@pytest.fixture(scope="module")
def bank(tokenizer):
    return tiny_wrapper("llama", tokenizer, KV).compress(TEXT)


def _forge(index, version, what):
    """Lower the format version and edit what the seal covered."""
    index["format_version"] = version
    if what == "provenance":
        index["provenance"]["chunk_size"] = 32
    elif what == "fingerprint":
        index["provenance"]["fingerprint"]["digest"] = "0" * 64
    elif what == "no seal":  # the seal dropped too: the table's block digests still show the format
        index["provenance"]["fingerprint"]["name"] = "another model"
        del index["seal"]


@pytest.mark.parametrize("version", [2, 1])
@pytest.mark.parametrize("what", ["provenance", "fingerprint", "no seal"])
def test_a_folder_whose_format_version_was_lowered_is_refused(bank, tmp_path, version, what):
    folder = tmp_path / "bank"
    bank.save(folder, folder=True)
    index = json.loads((folder / "bank.json").read_text())
    _forge(index, version, what)
    (folder / "bank.json").write_text(json.dumps(index))
    with pytest.raises(BankMismatchError, match=REFUSED):
        MemoryBank.load(folder)


@pytest.mark.parametrize("version", ["2", "1"])
@pytest.mark.parametrize("what", ["provenance", "fingerprint", "no seal"])
@pytest.mark.parametrize("index_too", [True, False])
def test_a_file_whose_format_version_was_lowered_is_refused(bank, tmp_path, version, what, index_too):
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    index = json.loads(metadata["index"])
    _forge(index, int(version) if index_too else index["format_version"], what)
    metadata.update(format_version=version, index=json.dumps(index))
    save_file(load_file(str(path)), str(tmp_path / "forged.safetensors"), metadata=metadata)
    with pytest.raises(BankMismatchError, match=REFUSED):
        MemoryBank.load(tmp_path / "forged.safetensors")


def test_an_unedited_bank_still_loads(bank, tmp_path):
    bank.save(tmp_path / "bank.safetensors")
    bank.save(tmp_path / "folder", folder=True)
    for path in (tmp_path / "bank.safetensors", tmp_path / "folder"):
        assert len(MemoryBank.load(path, verify=True)) == len(bank)
