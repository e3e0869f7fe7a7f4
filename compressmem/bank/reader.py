"""Opening a bank: a folder, or a single file that packs one, in any format this release reads.

Formats 2 to 4 are read by one path; the only difference between a folder and a file is where the shards
are (the folder's files, or the file itself) and where the gate indexes are kept. Opening checks the seal
(format 3 on) over the index, the block table and the prefix, and a folder's shard sizes; blocks stay on
disk until read (`store.py`). Format 1 (release 0.1) is read by `legacy.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .block import BlockTable
from .derived import FolderIndexes, KeptIndexes, PackedIndexes
from .integrity import seal
from .layout import (
    DIGESTS_TENSOR,
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    PREFIX_FILE,
    PREFIX_TENSORS,
    SIGNATURE_FILE,
    SIGNATURE_METADATA,
    TABLE_FILE,
    TABLE_TENSOR,
    Prefix,
    file_metadata,
    parse_signature,
    read_tensors,
)
from .legacy import read_legacy_file, read_legacy_folder
from .provenance import BankMismatchError, Provenance
from .store import ShardStore
from .writer import interrupted_shards

OpenedBank = tuple[ShardStore, Prefix, Provenance, dict[str, Any] | None]


def read_bank(path: str | Path) -> OpenedBank:
    """Open the bank at `path` (a folder or a `.safetensors` file, this format or an earlier one): its blocks
    stay on disk; returns the store, the prefix, how it was built and its KV layout.

    A sealed bank (format 3 on) is refused, naming the file, when its index, table or prefix differ from what
    was written, when a shard is missing, of another size, or holds another bank's blocks."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"No memory bank at {path}: it is neither a bank folder nor a .safetensors file.")
    return _read_file(path)


def _read_file(path: Path) -> OpenedBank:
    """A single-file bank: every shard its index lists is packed into the file itself."""
    metadata = file_metadata(path)
    if metadata.get("format") != FORMAT:
        raise BankMismatchError(f"{path} is not a compressmem memory bank (no bank metadata in the file).")
    version = _version(metadata.get("format_version"), path)
    if version < 3 and "index" in metadata:
        _check_claimed_version(version, _parse_json(metadata["index"], path, "bank index"), {}, path)
    if version == 1:
        return read_legacy_file(path, metadata)
    index = _parse_json(metadata.get("index"), path, "bank index")
    tensors = read_tensors(path, (*PREFIX_TENSORS, TABLE_TENSOR, DIGESTS_TENSOR))
    _check_claimed_version(version, index, tensors, path)
    files = [path] * len(_shard_records(index, path))
    kept = _packed_indexes(path, index, metadata, version)
    signature = parse_signature(metadata.get(SIGNATURE_METADATA), path)
    store, provenance = _open(path, index, version, tensors, files, kept, signature, shards_record_blocks=False)
    return store, Prefix.from_tensors(tensors), provenance, index.get("kv")


def _read_folder(directory: Path) -> OpenedBank:
    path = directory / INDEX
    if not path.is_file():
        shards = interrupted_shards(directory)
        if shards:
            raise BankMismatchError(
                f"{directory} is an incomplete bank: its compression was interrupted after {len(shards)} shards, "
                f"before {INDEX} was written. Run the same compress_stream into it again to resume."
            )
        raise BankMismatchError(f"{directory} is not a compressmem bank folder ({INDEX} is missing).")
    index = _parse_json(path.read_text(encoding="utf-8"), path, "bank index")
    if index.get("format") != FORMAT:
        raise BankMismatchError(f"{path} is not a compressmem bank index.")
    version = _version(index.get("format_version"), directory)
    _check_claimed_version(version, index, {}, directory)
    prefix_tensors = read_tensors(directory / PREFIX_FILE, PREFIX_TENSORS)
    if version == 1:
        files = [_inside(directory, name) for name in index.get("shards", [])]
        return read_legacy_folder(directory, index, Prefix.from_tensors(prefix_tensors), files)
    files = [_inside(directory, shard.get("file")) for shard in _shard_records(index, directory)]
    table = directory / TABLE_FILE
    tensors = {**prefix_tensors, **(read_tensors(table, (TABLE_TENSOR, DIGESTS_TENSOR)) if table.is_file() else {})}
    _check_claimed_version(version, index, tensors, directory)
    kept = FolderIndexes(directory, _recorded_seal(index, path)) if version >= 3 else KeptIndexes()
    signed = directory / SIGNATURE_FILE
    signature = parse_signature(signed.read_text(encoding="utf-8") if signed.is_file() else None, signed)
    store, provenance = _open(path, index, version, tensors, files, kept, signature, shards_record_blocks=True)
    _check_shard_sizes(files, _shard_records(index, directory), store.digests is not None)
    return store, Prefix.from_tensors(prefix_tensors), provenance, index.get("kv")


def _open(
    where: Path,
    index: dict[str, Any],
    version: int,
    tensors: dict[str, torch.Tensor],
    files: list[Path],
    kept: KeptIndexes,
    signature: dict[str, Any] | None,
    shards_record_blocks: bool,
) -> tuple[ShardStore, Provenance]:
    """The store of a bank of format 2 on, once its seal (format 3 on), block table and shards are checked."""
    if version >= 3 and index.get("seal") != seal(index, tensors):
        raise _seal_mismatch(where)
    provenance = Provenance.from_dict(index["provenance"])
    table = tensors.get(TABLE_TENSOR)
    if table is None or table.dim() != 2 or table.shape[0] != index.get("blocks"):
        raise BankMismatchError(
            f"The block table of {where} is missing or does not list the {index.get('blocks')} "
            "blocks its index counts: the bank is damaged."
        )
    infos = BlockTable(table)
    shards = infos.column("shard")
    if len(infos) and not bool(((shards >= 0) & (shards < len(files))).all()):
        raise BankMismatchError(f"The block table of {where} names shards outside the {len(files)} its index lists.")
    missing = sorted({f.name for f in files if not f.is_file()})
    if missing:
        raise BankMismatchError(
            f"{where.parent} lacks {len(missing)} of its {len(files)} shards ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): the bank is incomplete."
        )
    digests = tensors.get(DIGESTS_TENSOR)
    store = ShardStore(
        files,
        infos,
        provenance.compression,
        digests=digests,
        kept=kept,
        shards_record_blocks=shards_record_blocks,
        signature=signature,
    )
    return store, provenance


def _check_claimed_version(version: int, index: dict[str, Any], tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Refuse a bank that claims an unsealed format (1 or 2) but holds what only sealed formats write (a seal, or
    the blocks' digests): its version was lowered to skip the seal, and what the seal covers may have been edited
    with it."""
    if version >= 3:
        return
    recorded = index.get("format_version", version)  # a file's index records its version again
    indexed = _version(recorded, where) if recorded != version else version
    later = indexed >= 3 or (version == 1 and "provenance" in index)  # format 1's index has no provenance
    if "seal" in index or DIGESTS_TENSOR in tensors or later:
        raise BankMismatchError(
            f"{where} claims bank format {version}, which has no seal, but holds the seal, block digests or index "
            "of a later, sealed format: its format version was edited to skip the seal. The bank cannot be "
            "trusted: rebuild it (or restore it from its source)."
        )


def _recorded_seal(index: dict[str, Any], where: Path) -> str:
    """The seal a sealed bank's index records, refused when it records none (no seal could match it)."""
    recorded = index.get("seal")
    if not isinstance(recorded, str):
        raise _seal_mismatch(where)
    return recorded


def _seal_mismatch(where: Path) -> BankMismatchError:
    return BankMismatchError(
        f"{where} does not match its seal: the bank's index, block table or prefix was edited or damaged "
        "after it was written (e.g. layers reordered, blocks cut or repeated, another bank's table). "
        "Rebuild the bank."
    )


def _check_shard_sizes(files: list[Path], shards: list[dict[str, Any]], sealed: bool) -> None:
    """Refuse shards of another size than written (a sealed folder); which blocks each holds is checked when one of
    its blocks is first read (`ShardStore.check_shard`), so opening a bank of any size stays fast."""
    if not sealed:
        return
    for path, shard in zip(files, shards):
        if path.stat().st_size != shard.get("bytes"):
            raise BankMismatchError(
                f"{path} holds {path.stat().st_size} bytes where the bank's index lists "
                f"{shard.get('bytes')}: the shard is damaged or was replaced. Rebuild the bank."
            )


def _packed_indexes(path: Path, index: dict[str, Any], metadata: dict[str, str], version: int) -> KeptIndexes:
    """The gate indexes packed into a single-file bank: recorded in its `derived` entry (format 4), or, without
    digests, in its index (format 3: never used, rebuilt); none in an unsealed bank."""
    if version < 3:
        return KeptIndexes()
    if version == 3:
        records = {name: {"metadata": meta} for name, meta in (index.get("derived") or {}).items()}
    else:
        records = _parse_json(metadata.get("derived", "{}"), path, "record of its gate indexes")
    if not all(isinstance(record, dict) for record in records.values()):
        raise BankMismatchError(f"The record of the gate indexes in {path} is damaged: the file was edited.")
    return PackedIndexes(path, _recorded_seal(index, path), records)


def _shard_records(index: dict[str, Any], where: Path) -> list[dict[str, Any]]:
    """The index's list of shards, refused unless it is a list of records."""
    shards = index.get("shards")
    if not isinstance(shards, list) or not all(isinstance(shard, dict) for shard in shards):
        raise BankMismatchError(f"The bank index of {where} has no valid list of shards; the bank is damaged.")
    return shards


def _inside(directory: Path, name: Any) -> Path:
    """`directory / name`, refusing anything but the name of a file in the folder itself."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise BankMismatchError(
            f"The index of {directory} names the file {name!r}, which is not inside the bank "
            "folder: the bank is damaged or was tampered with."
        )
    return directory / name


def _version(value: Any, where: Path) -> int:
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise BankMismatchError(f"{where} has no valid bank format version ({value!r}); it is damaged.") from None
    if version > FORMAT_VERSION:
        raise BankMismatchError(
            f"{where} uses bank format {version}; this compressmem reads up to {FORMAT_VERSION}. Upgrade compressmem."
        )
    if version < 1:
        raise BankMismatchError(f"{where} has no valid bank format version ({value!r}); it is damaged.")
    return version


def _parse_json(text: Any, where: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        raise BankMismatchError(f"The {what} of {where} is not valid JSON; the bank is damaged.") from None
    if not isinstance(data, dict):
        raise BankMismatchError(f"The {what} of {where} is not a JSON object; the bank is damaged.")
    return data
