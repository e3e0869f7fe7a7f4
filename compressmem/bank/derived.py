"""The gate indexes kept with a bank (its BM25 postings, its packed gate keys), each under a digest.

A gate builds its index of a bank once and keeps it with the bank, so no later question, in this process
or another, builds it again: beside a folder's shards (`derived-NAME.safetensors`), inside a single-file
bank (`derived.NAME.*` tensors, their metadata in the file's `derived` entry), or in memory for a bank in
memory. An index is built after the bank was sealed, so it carries its own digest, naming the bank's
seal (`integrity.derived_digest`): one that was damaged, edited or copied from another bank is never
used. It is rebuilt, with a warning, by the gate that needs it, and `MemoryBank.verify` refuses it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .integrity import derived_digest
from .layout import open_safetensors
from .provenance import BankMismatchError

logger = logging.getLogger(__name__)

DerivedIndex = tuple[dict[str, torch.Tensor], dict]
"""A gate index kept with a bank: its tensors and its metadata."""

DERIVED_FILE = "derived-{name}.safetensors"
DERIVED_GLOB = "derived-*.safetensors"
PACKED_TENSORS = "derived.{name}."  # the start of a packed index's tensor names in a single-file bank


class KeptIndexes:
    """Gate indexes held in memory, for this process: those of a bank in memory, or of a bank whose format has no
    seal to bind an index to (what `FolderIndexes` and `PackedIndexes` read from disk is held here too)."""

    def __init__(self) -> None:
        self._held: dict[str, DerivedIndex] = {}
        self._lock = threading.Lock()

    def bank_seal(self) -> str | None:
        """The seal of the bank these indexes are bound to (None: a bank in memory, or of a format without one)."""
        return None

    def get(self, name: str) -> DerivedIndex | None:
        """Index `name`: held, or read from the bank and checked against its digest; None when there is none, or
        the one kept fails its check (a warning says why; the gate then rebuilds it)."""
        with self._lock:
            if name in self._held:
                return self._held[name]
        try:
            found = self._read(name)
        except KeptIndexError as error:
            logger.warning("%s; it is rebuilt.", error)
            return None
        if found is None:
            return None
        with self._lock:
            return self._held.setdefault(name, found)

    def put(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict, persist: bool = True) -> None:
        """Hold index `name` and, with `persist`, keep it with the bank on disk where the bank can take it."""
        with self._lock:
            self._held[name] = (tensors, metadata)
        if persist:
            self._write(name, tensors, metadata)

    def items(self) -> dict[str, DerivedIndex]:
        """Every index held or kept on disk that passes its check (what a saved copy of the bank takes along)."""
        for name in self.stored():
            self.get(name)
        with self._lock:
            return dict(self._held)

    def verify(self) -> None:
        """Raise `BankMismatchError`, naming it, at the first index kept on disk that fails its check."""
        for name in self.stored():
            try:
                self._read(name)
            except UndigestedIndexError:
                continue  # kept by an older format: never used, so nothing a reader could be misled by
            except KeptIndexError as error:
                raise BankMismatchError(
                    f"{error}: the bank's blocks are intact, but this gate index is not what was written. "
                    "It is never used; the next question that needs it rebuilds it."
                ) from None

    def stored(self) -> list[str]:
        """The names of the indexes kept on disk."""
        return []

    def _read(self, name: str) -> DerivedIndex | None:
        return None

    def _write(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        """Nothing to write: the index lives in this process only."""


class KeptIndexError(Exception):
    """A gate index kept with a bank failed its check (the message names it and says how)."""


class UndigestedIndexError(KeptIndexError):
    """A gate index kept by bank format 3 or earlier, without a digest: not used, but not a sign of damage."""


def checked(where: str, bank_seal: str, name: str, found: DerivedIndex, kept: dict[str, Any]) -> DerivedIndex:
    """`found` (tensors and metadata read for index `name`), unless its record `kept` (`bank`: the seal it was
    built for, `digest`) says it belongs to another bank or was changed since; raises `KeptIndexError`."""
    if kept.get("digest") is None:
        raise UndigestedIndexError(f"{where} was kept without a digest (by bank format 3 or earlier)")
    if kept.get("bank") != bank_seal:
        raise KeptIndexError(f"{where} was built for another bank")
    if derived_digest(bank_seal, name, *found) != kept["digest"]:
        raise KeptIndexError(f"{where} does not match its digest: it was edited or damaged")
    return found


class FolderIndexes(KeptIndexes):
    """Gate indexes kept beside a bank folder's shards, one `derived-NAME.safetensors` each (written atomically:
    processes may build the same index at once, and the last one kept is as good as the first)."""

    def __init__(self, folder: Path, bank_seal: str) -> None:
        super().__init__()
        self.folder = folder
        self.seal = bank_seal

    def bank_seal(self) -> str | None:
        return self.seal

    def path(self, name: str) -> Path:
        return self.folder / DERIVED_FILE.format(name=name)

    def stored(self) -> list[str]:
        start, end = DERIVED_GLOB.split("*")
        return sorted(p.name[len(start) : -len(end)] for p in self.folder.glob(DERIVED_GLOB))

    def _read(self, name: str) -> DerivedIndex | None:
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            with open_safetensors(path) as handle:
                kept = handle.metadata() or {}
            metadata = json.loads(kept.get("metadata", "{}"))
            tensors = load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors' own error types, or bad JSON: a damaged index
            raise KeptIndexError(f"{path} is damaged ({error})") from None
        return checked(str(path), self.seal, name, (tensors, metadata), kept)

    def _write(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        path = self.path(name)
        partial = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.partial")
        stored = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
        record = {
            "metadata": json.dumps(metadata),
            "bank": self.seal,
            "digest": derived_digest(self.seal, name, stored, metadata),
        }
        try:
            save_file(stored, str(partial), metadata=record)
            os.replace(partial, path)
        except OSError:  # a read-only bank still answers; the index is rebuilt in the next process
            partial.unlink(missing_ok=True)


class PackedIndexes(KeptIndexes):
    """Gate indexes packed into a single-file bank when it was saved: tensors `derived.NAME.*`, and per index
    its metadata, the seal it was built for and its digest (`records`). Those built since are held in memory
    and go into the file the next time the bank is saved."""

    def __init__(self, path: Path, bank_seal: str, records: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.file = path
        self.seal = bank_seal
        self.records = records

    def bank_seal(self) -> str | None:
        return self.seal

    def stored(self) -> list[str]:
        return sorted(self.records)

    def _read(self, name: str) -> DerivedIndex | None:
        record = self.records.get(name)
        if record is None:
            return None
        where = f"The gate index {name!r} in {self.file}"
        start = PACKED_TENSORS.format(name=name)
        try:
            with open_safetensors(self.file) as handle:
                names = [key for key in handle.keys() if key.startswith(start)]  # noqa: SIM118 - not a dict
                tensors = {key[len(start) :]: handle.get_tensor(key) for key in names}
        except Exception as error:  # noqa: BLE001 - safetensors' own error types: a damaged index
            raise KeptIndexError(f"{where} is damaged ({error})") from None
        return checked(where, self.seal, name, (tensors, record.get("metadata", {})), record)


def packed_records(bank_seal: str, indexes: dict[str, DerivedIndex]) -> dict[str, dict[str, Any]]:
    """What a single-file bank records of the indexes packed into it: per index its metadata, the seal it was
    built for and its digest."""
    return {
        name: {"metadata": metadata, "bank": bank_seal, "digest": derived_digest(bank_seal, name, tensors, metadata)}
        for name, (tensors, metadata) in indexes.items()
    }
