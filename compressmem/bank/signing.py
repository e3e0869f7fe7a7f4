"""Signed banks: proof of who wrote a bank, which its seal cannot give.

The seal (`integrity.py`) proves that a bank is read as it was written: it catches damage, cut files and
shards of another bank. It is not authenticity: whoever can write a bank can change a fact in it and
recompute the seal. A signature is made over the seal (which covers the index, the block table with
every block's digests, the prefix and the shards' sizes, so every part of the bank) with a key a forger
does not hold; `MemoryBank.load(path, trusted_keys=...)` refuses a bank that is unsigned, signed by
another key, or whose seal changed since it was signed.

Two kinds of key: an Ed25519 key pair (the `cryptography` package, `pip install "compressmem[signing]"`):
the private key signs, the public key is given to readers; or an HMAC-SHA256 secret shared by one team
(standard library): the same secret signs and checks. A folder bank keeps its signature in
`signature.json`; a single-file bank in its `signature` metadata entry. Gate indexes kept with a bank are
caches bound to its seal by their own digests, not signed: they direct which blocks are read, never what
a block holds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ..errors import SigningError
from .layout import FORMAT, SIGNATURE_FILE, SIGNATURE_METADATA, file_metadata
from .provenance import BankMismatchError
from .reader import read_bank

HMAC = "hmac-sha256"
ED25519 = "ed25519"
_SIGNED = b"compressmem.MemoryBank seal, signed (1):"  # what is signed: this, then the seal
_INSTALL = 'Ed25519 keys need the cryptography package: pip install "compressmem[signing]"'


@dataclass(frozen=True)
class HmacKey:
    """A secret shared by one team: it signs banks and checks them (HMAC-SHA256). At least 16 bytes; 32 random
    bytes (`os.urandom(32)`) is the usual choice."""

    secret: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < 16:
            raise SigningError("An HMAC key must be a secret of at least 16 bytes (32 random bytes is usual).")

    def __repr__(self) -> str:
        return f"HmacKey(id {key_id(self)})"


def load_key(path: str | Path) -> Any:
    """The key in file `path`: a PEM Ed25519 private key (to sign) or public key (to trust), else an HMAC secret
    (the file's bytes, surrounding whitespace removed)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SigningError(f"cannot read the key file {path} ({error.strerror}); check the path.") from None
    if not data.lstrip().startswith(b"-----BEGIN"):
        return HmacKey(data.strip())
    serialization = _cryptography().serialization
    try:
        if b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise SigningError(f"{path} is not a readable PEM key ({error}).") from None
    _scheme(key)  # an Ed25519 key, or refused
    return key


def signing_key(key: Any) -> Any:
    """`key` (or the key in the file at that path) if it can sign a bank, else a `SigningError` saying why: an
    Ed25519 public key only checks signatures."""
    key = _key(key)
    if _scheme(key) == ED25519 and not hasattr(key, "sign"):
        raise SigningError(
            "A bank is signed with a private key (or an HMAC secret); this Ed25519 key is public: give it to "
            "readers, who check signatures with it."
        )
    return key


def key_id(key: Any) -> str:
    """A short public name of a key, recorded with a signature, so a refusal can say which key signed: the hash of
    an Ed25519 public key, or a keyed hash of an HMAC secret (which reveals nothing of it)."""
    if isinstance(key, HmacKey):
        return hmac.new(key.secret, b"compressmem key id", hashlib.sha256).hexdigest()[:16]
    serialization = _cryptography().serialization
    raw = _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signature_record(seal: str, key: Any) -> dict[str, str]:
    """The signature of the bank sealed `seal`, made with `key` (an `HmacKey`, an Ed25519 private key, or a key
    file's path), as it is kept with the bank."""
    key = signing_key(key)
    scheme = _scheme(key)
    signature = _sign(key, _SIGNED + seal.encode())
    return {"format": FORMAT, "scheme": scheme, "key_id": key_id(key), "seal": seal, "signature": signature}


def check_signature(record: dict[str, Any] | None, seal: str | None, trusted_keys: list[Any], where: Path) -> None:
    """Raise `BankMismatchError`, naming the problem, unless `record` is a valid signature of the bank sealed
    `seal` by one of `trusted_keys`."""
    keys = [_key(key) for key in trusted_keys]
    if seal is None:
        raise BankMismatchError(
            f"{where} is in a bank format without a seal (written before release 0.3), so it cannot be signed: "
            "rebuild it and sign it, or load it without trusted_keys."
        )
    if record is None:
        raise BankMismatchError(
            f"{where} is not signed, and trusted keys were given: ask its maker for a signed bank (compress "
            "--sign-key, or compressmem.bank.sign_bank), or load it without trusted keys if you trust its source."
        )
    if not isinstance(record, dict) or record.get("seal") != seal:
        raise BankMismatchError(
            f"{where} carries a signature of another seal: the bank was changed after it was signed (or the "
            "signature was copied from another bank). Do not use it; get the signed bank again from its maker."
        )
    signer = record.get("key_id")
    matching = [key for key in keys if _scheme(key) == record.get("scheme") and key_id(key) == signer]
    if not matching:
        trusted = ", ".join(f"{_scheme(key)} {key_id(key)}" for key in keys)
        raise BankMismatchError(
            f"{where} is signed by a key that is not trusted ({record.get('scheme')} key {signer}; trusted: "
            f"{trusted}). Add its maker's key to the trusted keys only if you trust that maker."
        )
    if not _verifies(matching[0], _SIGNED + seal.encode(), str(record.get("signature", ""))):
        raise BankMismatchError(
            f"{where}: its signature does not verify with the trusted {record['scheme']} key {signer}: the bank or "
            "its signature was forged or damaged. Do not use it."
        )


def sign_bank(path: str | Path, key: Any) -> dict[str, str]:
    """Sign the bank at `path` (a folder, or a single file, which is written again with its signature) with `key`
    (an `HmacKey`, an Ed25519 private key, or a key file's path); the signature record. The bank is opened, and
    so its seal checked, first: a damaged bank is never signed."""
    path = Path(path)
    store = read_bank(path)[0]
    seal = store.kept.bank_seal()
    if seal is None:
        raise SigningError(f"{path} is in a bank format without a seal, so it cannot be signed: rebuild it first.")
    record = signature_record(seal, key)
    text = json.dumps(record)
    if path.is_dir():
        partial = path / f"{SIGNATURE_FILE}.partial"
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path / SIGNATURE_FILE)
    else:
        metadata = {**file_metadata(path), SIGNATURE_METADATA: text}
        partial = path.with_name(path.name + ".partial")
        save_file(load_file(str(path)), str(partial), metadata=metadata)
        os.replace(partial, path)
    return record


def _sign(key: Any, message: bytes) -> str:
    """`message` signed with `key` (an `HmacKey` or an Ed25519 private key), in hex."""
    if isinstance(key, HmacKey):
        return hmac.new(key.secret, message, hashlib.sha256).hexdigest()
    return str(key.sign(message).hex())


def _verifies(key: Any, message: bytes, signature: str) -> bool:
    if isinstance(key, HmacKey):
        return hmac.compare_digest(_sign(key, message), signature)
    try:
        _public(key).verify(bytes.fromhex(signature), message)
    except (ValueError, _cryptography().InvalidSignature):
        return False
    return True


def _key(key: Any) -> Any:
    """A key given as a key file's path, loaded; other keys as they are."""
    return load_key(key) if isinstance(key, (str, Path)) else key


def _scheme(key: Any) -> str:
    """The signature scheme of `key`, refusing what is not a key this module uses."""
    if isinstance(key, HmacKey):
        return HMAC
    if isinstance(key, (bytes, bytearray)):
        raise SigningError("Give an HMAC secret as HmacKey(secret), or a key file's path; not bare bytes.")
    ed25519 = _cryptography().ed25519
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ED25519
    raise SigningError(
        f"A bank is signed with an Ed25519 key or an HmacKey (or a key file's path); got {type(key).__name__}."
    )


def _public(key: Any) -> Any:
    return key.public_key() if hasattr(key, "public_key") else key


@dataclass(frozen=True)
class _Cryptography:
    serialization: Any
    ed25519: Any
    InvalidSignature: type[Exception]


def _cryptography() -> _Cryptography:
    """The parts of `cryptography` Ed25519 signing uses, or a `SigningError` that says how to install it."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningError(_INSTALL) from None
    return _Cryptography(serialization, ed25519, InvalidSignature)
