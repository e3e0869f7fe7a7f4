"""Signed banks: the seal is not authenticity (a forger who changes a needle's number and seals the bank again gets a
bank that loads and verifies), a signature is: with trusted keys (Ed25519 or a team's HMAC secret) a forged,
unsigned or otherwise signed bank is refused, naming the problem; the command line signs and checks too."""

import json
import sys

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from compressmem import BankMismatchError, ChunkingConfig, MemoryBank, MemoryConfig
from compressmem.bank import HmacKey, load_key, sign_bank
from compressmem.bank.integrity import field_digests, seal
from compressmem.bank.layout import stored_names
from compressmem.bank.signing import key_id
from compressmem.cli import main
from compressmem.errors import SigningError

from .conftest import tiny_wrapper

IDS = MemoryConfig(chunking=ChunkingConfig(16))
NEEDLE = "4719283"
TEXT = ("Bakers rise before dawn to knead bread for the town. " * 6 + f"The vault code is {NEEDLE}, said the keeper. "
        + "Fishing boats leave the harbour at first light. " * 6)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_wrapper("llama", tokenizer, IDS)


@pytest.fixture(scope="module")
def ed25519():
    return Ed25519PrivateKey.generate()


def _pem(tmp_path, key, public=False):
    """Write `key` (or its public half) as a PEM file."""
    if public:
        data = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    path = tmp_path / ("public.pem" if public else "private.pem")
    path.write_bytes(data)
    return path


def _forge_needle(folder, tokenizer):
    """Change the needle's first digit in a bank folder, as a forger would, and seal the bank again with
    `compressmem.bank.integrity.seal`: the block's digests, its shard's record, the table and the index's seal."""
    index = json.loads((folder / "bank.json").read_text())
    table = load_file(str(folder / "table.safetensors"))
    digit, forged = tokenizer.convert_tokens_to_ids([NEEDLE[0], "9"])
    for number, shard in enumerate(index["shards"]):
        path = folder / shard["file"]
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata())
        rows = json.loads(metadata["blocks"])
        for row in rows:
            names = stored_names(row[0])
            ids = tensors[names["token_ids"]]
            if digit not in ids.tolist() or NEEDLE not in tokenizer.decode(ids):
                continue
            ids[ids.tolist().index(digit)] = forged
            digests = field_digests(tensors, names)
            row[8:] = [f"{d:016x}" for d in digests]
            table["block_digests"][row[0]] = torch.tensor(digests, dtype=torch.int64)
            metadata["blocks"] = json.dumps(rows)
            save_file(tensors, str(path), metadata=metadata)
            save_file(table, str(folder / "table.safetensors"))
            index["shards"][number]["bytes"] = path.stat().st_size
            prefix = load_file(str(folder / "prefix.safetensors"))
            index["seal"] = seal(index, {**prefix, **table})
            (folder / "bank.json").write_text(json.dumps(index))
            return
    raise AssertionError("the needle's block was not found")


def _needle_read(bank, tokenizer):
    return "".join(tokenizer.decode(block.token_ids) for block in bank.blocks)


@pytest.mark.parametrize("kind", ["ed25519", "hmac"])
def test_a_forged_bank_passes_its_seal_but_not_a_trusted_signature(model, tokenizer, ed25519, kind, tmp_path):
    key = ed25519 if kind == "ed25519" else HmacKey(b"our team's secret, 32 bytes long")
    trusted = ed25519.public_key() if kind == "ed25519" else HmacKey(b"our team's secret, 32 bytes long")
    folder = tmp_path / "bank"
    model.compress(TEXT).save(folder, folder=True, sign_key=key)
    assert NEEDLE in _needle_read(MemoryBank.load(folder, trusted_keys=[trusted], verify=True), tokenizer)

    _forge_needle(folder, tokenizer)
    forged = MemoryBank.load(folder, verify=True)  # the seal is not authenticity: the forgery verifies
    assert NEEDLE not in _needle_read(forged, tokenizer) and "9719283" in _needle_read(forged, tokenizer)
    with pytest.raises(BankMismatchError, match="signature of another seal: the bank was changed after it was signed"):
        MemoryBank.load(folder, trusted_keys=[trusted])
    forger = Ed25519PrivateKey.generate() if kind == "ed25519" else HmacKey(b"the forger's own secret, 32 bytes")
    sign_bank(folder, forger)  # signed again, by the forger
    scheme = "ed25519" if kind == "ed25519" else "hmac-sha256"
    with pytest.raises(BankMismatchError, match=f"signed by a key that is not trusted \\({scheme} key"):
        MemoryBank.load(folder, trusted_keys=[trusted])
    record = json.loads((folder / "signature.json").read_text())
    record["key_id"] = key_id(trusted)  # the forger claims the trusted key's name
    (folder / "signature.json").write_text(json.dumps(record))
    with pytest.raises(BankMismatchError, match="signature does not verify with the trusted .* forged or damaged"):
        MemoryBank.load(folder, trusted_keys=[trusted])


def test_a_signed_file_loads_with_its_key_and_an_unsigned_one_is_refused(model, ed25519, tmp_path):
    bank = model.compress(TEXT)
    bank.save(tmp_path / "signed.safetensors", sign_key=ed25519)
    bank.save(tmp_path / "unsigned.safetensors")
    public = _pem(tmp_path, ed25519, public=True)
    assert len(MemoryBank.load(tmp_path / "signed.safetensors", trusted_keys=[public], verify=True)) == len(bank)
    assert len(MemoryBank.load(tmp_path / "unsigned.safetensors")) == len(bank)  # no keys: no signature asked for
    with pytest.raises(BankMismatchError, match="unsigned.safetensors is not signed, and trusted keys were given"):
        MemoryBank.load(tmp_path / "unsigned.safetensors", trusted_keys=[public])
    sign_bank(tmp_path / "unsigned.safetensors", _pem(tmp_path, ed25519))  # signed afterwards, from a key file
    MemoryBank.load(tmp_path / "unsigned.safetensors", trusted_keys=[Ed25519PrivateKey.generate().public_key(),
                                                                     public])
    with pytest.raises(SigningError, match="a list of one or more keys"):
        MemoryBank.load(tmp_path / "signed.safetensors", trusted_keys=[])
    with pytest.raises(SigningError, match="this Ed25519 key is public"):
        bank.save(tmp_path / "other.safetensors", sign_key=ed25519.public_key())
    with pytest.raises(SigningError, match="at least 16 bytes"):
        HmacKey(b"short")


def test_without_cryptography_an_ed25519_key_names_the_extra_to_install(ed25519, tmp_path, monkeypatch):
    public = _pem(tmp_path, ed25519, public=True)
    for name in [name for name in sys.modules if name == "cryptography" or name.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SigningError, match=r'pip install "compressmem\[signing\]"'):
        load_key(public)
    (tmp_path / "hmac.key").write_bytes(b"x" * 32)
    assert isinstance(load_key(tmp_path / "hmac.key"), HmacKey)  # an HMAC secret needs only the standard library


def test_the_command_line_signs_and_checks_with_trusted_keys(base_folder, ed25519, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    private, public = _pem(tmp_path, ed25519), _pem(tmp_path, ed25519, public=True)
    common = ["--model", base_folder, "--chunk-size", "16", "--quiet"]
    assert main(["compress", str(text), "-o", str(tmp_path / "bank.safetensors"), "--sign-key", str(private),
                 *common]) == 0
    assert main(["compress", str(text), "-o", str(tmp_path / "folder"), "--sign-key", str(private), *common]) == 0
    assert ", signed" in capsys.readouterr().out
    for bank in ("bank.safetensors", "folder"):
        MemoryBank.load(tmp_path / bank, trusted_keys=[public])
    other = tmp_path / "other"
    other.mkdir()
    stranger = _pem(other, Ed25519PrivateKey.generate(), public=True)
    question = ["ask", "--question", "What is the vault code?", "--max-new-tokens", "2", *common]
    assert main([*question, "--context", str(tmp_path / "folder"), "--trusted-key", str(stranger)]) == 1
    assert "is signed by a key that is not trusted" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main([*question, "--context", str(text), "--trusted-key", str(public)])
    assert usage.value.code == 2
    assert "--trusted-key checks a bank's signature" in capsys.readouterr().err
    assert main(["compress", str(text), "-o", str(tmp_path / "x.safetensors"), "--sign-key", str(public),
                 *common]) == 1
    assert "this Ed25519 key is public" in capsys.readouterr().err
