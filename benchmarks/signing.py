"""What signing a bank costs: bytes added, seconds to sign, seconds to check a signature on load, at 1M and 10M tokens.

A signature covers the bank's seal, not its blocks, so its cost does not grow with the bank, except where signing
an existing single file writes the file again (its metadata is in its header). The banks are synthetic token-id
banks (chunks of 128 random ids, written by the bank's own writer and sealed as any bank): what is measured does not
depend on what the blocks hold, only on how many there are (the seal covers the block table).

    OMP_NUM_THREADS=1 python benchmarks/signing.py [--tokens 1000000 10000000] [--folder /tmp/signing]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from compressmem.bank import BankWriter, HmacKey, MemoryBank, MemoryBlock, Prefix, Provenance, sign_bank, write_index
from compressmem.bank.pack import pack
from compressmem.bank.signing import signature_record
from compressmem.hf.fingerprint import BaseFingerprint

CHUNK = 128


def synthetic_folder(folder: Path, tokens: int) -> None:
    """A sealed token-id bank of `tokens` tokens in chunks of `CHUNK`."""
    provenance = Provenance(BaseFingerprint("synthetic", "0" * 64), CHUNK)
    writer = BankWriter(folder, provenance, shard_blocks=256)
    generator = torch.Generator().manual_seed(0)
    for start in range(0, tokens, CHUNK):
        ids = torch.randint(0, 49152, (min(CHUNK, tokens - start),), generator=generator)
        writer.add(MemoryBlock(ids, None, None, None, 0, start, None))
    write_index(folder, [writer.finish()], Prefix(torch.tensor([1, 2, 3])), provenance)


def median_seconds(run, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(tokens: int, where: Path) -> dict:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder, file = where / f"bank-{tokens}", where / f"bank-{tokens}.safetensors"
    shutil.rmtree(folder, ignore_errors=True)
    synthetic_folder(folder, tokens)
    pack(folder, file)
    ed25519, team = Ed25519PrivateKey.generate(), HmacKey(b"a team secret of thirty-two bytes")
    seal = json.loads((folder / "bank.json").read_text())["seal"]
    result: dict = {"tokens": tokens, "blocks": -(-tokens // CHUNK), "file_bytes": file.stat().st_size}
    for name, key, trusted in (("ed25519", ed25519, ed25519.public_key()), ("hmac", team, team)):
        record = signature_record(seal, key)
        unsigned_file = file.stat().st_size
        result[name] = {
            "signature_s": median_seconds(lambda key=key: signature_record(seal, key), 20),  # what save(sign_key=) adds
            "sign_folder_s": median_seconds(lambda key=key: sign_bank(folder, key)),  # opens (seal checked), writes
            "folder_bytes_added": (folder / "signature.json").stat().st_size,
            "record_bytes": len(json.dumps(record)),
            "load_folder_s": median_seconds(lambda: MemoryBank.load(folder)),
            "load_folder_trusted_s": median_seconds(lambda t=trusted: MemoryBank.load(folder, trusted_keys=[t])),
        }
        pack(folder, file)  # unsigned again
        result[name]["sign_file_afterwards_s"] = median_seconds(lambda key=key: sign_bank(file, key), 3)
        result[name]["file_bytes_added"] = file.stat().st_size - unsigned_file
        result[name]["load_file_s"] = median_seconds(lambda: MemoryBank.load(file))
        result[name]["load_file_trusted_s"] = median_seconds(lambda t=trusted: MemoryBank.load(file, trusted_keys=[t]))
        (folder / "signature.json").unlink()
        pack(folder, file)
    shutil.rmtree(folder)
    file.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/compressmem-signing"))
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    for tokens in args.tokens:
        print(json.dumps(measure(tokens, args.folder), indent=1), flush=True)


if __name__ == "__main__":
    main()
