"""Memory banks: compressed documents (`MemoryBank`), how they were built (`Provenance`), and their one format
on disk: `layout` (names and shapes), `writer` (the one writer), `pack` (a folder packed into one file),
`reader` and `store` (opening and reading), `derived` (the gate indexes kept with a bank, under digests),
`legacy` (release 0.1's banks)."""

from .bank import Blocks, BlockStore, DerivedIndex, MemoryBank, MemoryStore
from .block import BlockInfo, MemoryBlock
from .kept import KeptBlock, KeptKV, owner_token
from .layout import INDEX, Prefix, block_tensors, kv_layout, stored_names
from .provenance import BankMismatchError, BankNeeds, Provenance
from .reader import read_bank
from .signing import HmacKey, load_key, sign_bank, signing_key
from .writer import BankPart, BankWriter, Entry, check_stream_settings, merge_parts, stream_settings, write_index

__all__ = [
    "INDEX",
    "BankMismatchError",
    "BankNeeds",
    "BankPart",
    "BankWriter",
    "BlockInfo",
    "BlockStore",
    "Blocks",
    "DerivedIndex",
    "Entry",
    "HmacKey",
    "KeptBlock",
    "KeptKV",
    "MemoryBank",
    "MemoryBlock",
    "MemoryStore",
    "Prefix",
    "Provenance",
    "block_tensors",
    "check_stream_settings",
    "kv_layout",
    "load_key",
    "merge_parts",
    "owner_token",
    "read_bank",
    "sign_bank",
    "signing_key",
    "stored_names",
    "stream_settings",
    "write_index",
]
