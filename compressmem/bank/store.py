"""`ShardStore`: the blocks of a bank on disk, each read from its shard when asked for and checked as it is read.

Wherever the shards are (files of a folder, or all in one packed file), a block is read the same way:
by its stored names, against the digests the sealed table gives it. The gate indexes kept with the bank
are its `kept` indexes (`derived.py`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import CompressionConfig
from ..quantize import CHANNELS, TOKENS, Quantized
from .block import BlockTable, MemoryBlock
from .derived import DerivedIndex, KeptIndexes
from .integrity import FIELDS, QUANTIZED_PARTS, field_digests, tensor_digest
from .layout import KEY, file_metadata, open_safetensors, row_digests, stored_names
from .memo import Memo
from .provenance import BankMismatchError


class ShardStore:
    """The blocks of a bank on disk, loaded from their shard on each access (never cached).

    `files[s]` is shard `s` (in a single-file bank, the file itself for every shard); `key` names a block's
    tensors (`{index}.{field}`). A sealed bank (format 3 on) has `digests` `[blocks, 4]`, checked whenever
    a block or its token ids are read. With `shards_record_blocks` (a sealed folder), the first read from a
    shard checks that it records the very blocks the table gives it. `kept` holds the gate indexes, `signature`
    the bank's signature record, as read when it was opened.
    """

    def __init__(
        self,
        files: list[Path],
        infos: BlockTable,
        compression: CompressionConfig | None = None,
        key: str = KEY,
        digests: torch.Tensor | None = None,
        kept: KeptIndexes | None = None,
        shards_record_blocks: bool = False,
        signature: dict[str, Any] | None = None,
    ) -> None:
        self.files = files
        self.signature = signature  # the signature kept with the bank (`signing.py`), None when unsigned
        self.infos = infos
        self.shard_of = infos.column("shard").tolist()
        self.compression = compression  # how its KV was quantized, to read it back
        self.key = key
        self.digests = digests
        self.kept = kept if kept is not None else KeptIndexes()
        self.device = torch.device("cpu")
        self.memo = Memo()
        self._lock = threading.Lock()
        self._checked: set[int] = set()  # shards whose recorded blocks matched the table
        self._shards_record_blocks = shards_record_blocks and digests is not None

    def __len__(self) -> int:
        return len(self.infos)

    def check_shard(self, shard: int) -> None:
        """Refuse shard `shard` (once per process) unless it records the very blocks, with the very digests, that
        the sealed table gives it: another bank's shard of the same size is caught before any block is used."""
        if not self._shards_record_blocks or self.digests is None or shard in self._checked:
            return
        path = self.files[shard]
        rows = json.loads(file_metadata(path).get("blocks", "[]"))
        recorded = torch.tensor([[row[0], *row_digests(row)] for row in rows], dtype=torch.int64)
        listed = (self.infos.column("shard") == shard).nonzero().flatten()
        expected = torch.cat([listed[:, None], self.digests[listed]], dim=1)
        if recorded.shape != expected.shape or not torch.equal(recorded[torch.argsort(recorded[:, 0])], expected):
            raise BankMismatchError(
                f"{path} holds other blocks than this bank's index lists: it is another bank's "
                "shard or was damaged. Rebuild the bank."
            )
        with self._lock:
            self._checked.add(shard)

    def load(self, index: int) -> MemoryBlock:
        info = self.infos[index]
        self.check_shard(self.shard_of[index])
        names = stored_names(index, self.key)
        with open_safetensors(self.files[self.shard_of[index]], str(self.device)) as handle:
            present = set(handle.keys())
            stored = {
                name + part: handle.get_tensor(name + part)
                for name in names.values()
                for part in QUANTIZED_PARTS
                if name + part in present
            }
        if names["token_ids"] not in stored:
            raise BankMismatchError(f"{self.files[self.shard_of[index]]} lacks block {index}: the bank is damaged.")
        self._check_digests(index, field_digests(stored, names), FIELDS)
        token_ids = self._unquantized(index, self._field(stored, names["token_ids"], "token_ids"), "token ids")
        positions = self._field(stored, names["positions"], "positions")
        return MemoryBlock(
            token_ids=self._checked_ids(index, token_ids),
            keys=self._field(stored, names["keys"], "keys"),
            values=self._field(stored, names["values"], "values"),
            positions=None if positions is None else self._unquantized(index, positions, "positions"),
            document=info.document,
            token_start=info.token_start,
            char_span=info.char_span,
        )

    def _unquantized(self, index: int, tensor: torch.Tensor | Quantized | None, what: str) -> torch.Tensor:
        """Block `index`'s `what` as the plain tensor a bank stores them as, refused when missing or quantized."""
        if not isinstance(tensor, torch.Tensor):
            raise BankMismatchError(
                f"Block {index}'s {what} in {self.files[self.shard_of[index]]} are "
                f"{'missing' if tensor is None else 'stored quantized'}: the bank is damaged. Rebuild the bank."
            )
        return tensor

    def _field(self, stored: dict[str, torch.Tensor], name: str, field: str) -> torch.Tensor | Quantized | None:
        """One stored field of a block: a tensor, a quantized one (codes, scales, zeros), or None."""
        if name not in stored:
            return None
        if f"{name}.scales" not in stored:
            return stored[name]
        if self.compression is None or self.compression.group is None:
            raise BankMismatchError(
                f"{name} is stored quantized, but the bank's settings quantize nothing: the bank is damaged. "
                "Rebuild the bank."
            )
        bits, group = self.compression.bits, self.compression.group
        return Quantized(
            stored[name],
            stored[f"{name}.scales"],
            stored[f"{name}.zeros"],
            bits,
            group,
            TOKENS if field == "keys" else CHANNELS,
        )

    def token_ids(self, index: int) -> torch.Tensor:
        self.check_shard(self.shard_of[index])
        with open_safetensors(self.files[self.shard_of[index]]) as handle:
            ids = handle.get_tensor(stored_names(index, self.key)["token_ids"])
        self._check_digests(index, [tensor_digest([ids])], FIELDS[:1])
        return self._checked_ids(index, ids)

    def _check_digests(self, index: int, found: list[int], fields: tuple[str, ...]) -> None:
        """Refuse block `index` unless what was read of its `fields` is what was written (a sealed bank)."""
        if self.digests is None:
            return
        expected = self.digests[index, : len(fields)].tolist()
        wrong = [field for field, a, b in zip(fields, found, expected) if a != b]
        if wrong:
            raise BankMismatchError(
                f"Block {index}'s {', '.join(wrong)} in {self.files[self.shard_of[index]]} are not what was written "
                "(their digest differs from the bank's table): the file is damaged or was replaced. Rebuild the bank."
            )

    def _checked_ids(self, index: int, ids: torch.Tensor) -> torch.Tensor:
        """Block `index`'s stored token ids as int64, refused unless they are integers, as many as the block
        table says the block holds."""
        if (
            ids.is_floating_point()
            or ids.dtype == torch.bool
            or ids.dim() != 1
            or ids.numel() != self.infos[index].num_tokens
        ):
            raise BankMismatchError(
                f"Block {index} in {self.files[self.shard_of[index]]} holds {ids.numel()} token ids of dtype "
                f"{ids.dtype}, where the bank's table lists {self.infos[index].num_tokens} integer ids: the bank is "
                "damaged or mixes another bank's files."
            )
        return ids.long()

    def verify(self, show_progress: bool = False) -> None:
        """Read the whole bank back, every block against its digests (which cover every byte of its tensors), and
        check every gate index kept with it; raise `BankMismatchError` at the first difference."""
        for shard in range(len(self.files)):
            self.check_shard(shard)
        for index in tqdm(range(len(self)), desc="Verifying", unit="block", disable=not show_progress):
            self.load(index)
        self.kept.verify()

    def derived(self, name: str) -> DerivedIndex | None:
        """A gate index kept with the bank, checked against its digest: its tensors and metadata, or None if
        none was kept (or the one kept fails its check: it is rebuilt)."""
        return self.kept.get(name)

    def keep_derived(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict, persist: bool = True) -> None:
        """Keep a gate index with the bank: held in memory for this process and, with `persist`, written beside
        a folder's shards under its digest (a single-file bank takes it in when it is saved)."""
        self.kept.put(name, tensors, metadata, persist)

    def derived_items(self) -> dict[str, DerivedIndex]:
        return self.kept.items()
