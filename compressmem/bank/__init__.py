"""Memory banks: compressed documents (`MemoryBank`), how they were built (`Provenance`), and their one format
on disk (`storage`)."""

from .bank import Blocks, BlockStore, DerivedIndex, MemoryBank, MemoryStore
from .block import BlockInfo, MemoryBlock
from .kept import KeptBlock, KeptKV
from .provenance import BankMismatchError, BankNeeds, Provenance
from .storage import BankPart, BankWriter, Entry, Prefix, kv_layout, merge_parts, write_index

__all__ = [
    "BankMismatchError",
    "BankNeeds",
    "BankPart",
    "BankWriter",
    "BlockInfo",
    "BlockStore",
    "Blocks",
    "DerivedIndex",
    "Entry",
    "KeptBlock",
    "KeptKV",
    "MemoryBank",
    "MemoryBlock",
    "MemoryStore",
    "Prefix",
    "Provenance",
    "kv_layout",
    "merge_parts",
    "write_index",
]
