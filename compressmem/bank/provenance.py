"""How a bank was built, and the check that it holds what a reader needs.

Every bank records its `Provenance`: the base model's fingerprint, the chunk size, the compression
(method, ratio, score, and a digest of a learned compressor's weights), which layers' keys each block
holds and whether it holds values. A reader states its `BankNeeds`; a bank that cannot serve them is
refused with a message naming both sides and what to do, never read silently wrong.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import CompressionConfig
from ..errors import BankMismatchError
from ..hf.fingerprint import BaseFingerprint


@dataclass(frozen=True)
class Provenance:
    """How a bank was built. `compression` is None for a bank of token ids only (no KV)."""

    fingerprint: BaseFingerprint
    chunk_size: int
    compression: CompressionConfig | None = None
    compressor_digest: str | None = None  # a learned compressor's weights, hashed; None for training-free ones
    layers: tuple[int, ...] = ()  # the layers whose keys each block holds
    values: bool = False  # whether blocks hold values (compressed reading) besides keys

    def describe(self) -> str:
        """The settings in words, for error messages."""
        if self.compression is None:
            return f"chunks of {self.chunk_size} tokens, token ids only (no compressed KV)"
        held = f"keys at layers {list(self.layers)}" + (" and values" if self.values else "")
        return f"chunks of {self.chunk_size} tokens, {_compression_words(self.compression)}, {held}"

    def to_dict(self) -> dict[str, Any]:
        compression = None if self.compression is None else dataclasses.asdict(self.compression)
        return {
            "fingerprint": self.fingerprint.to_dict(),
            "chunk_size": self.chunk_size,
            "compression": compression,
            "compressor_digest": self.compressor_digest,
            "layers": list(self.layers),
            "values": self.values,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        compression = data.get("compression")
        return cls(
            fingerprint=BaseFingerprint.from_dict(data["fingerprint"]),
            chunk_size=int(data["chunk_size"]),
            compression=None if compression is None else CompressionConfig(**compression),
            compressor_digest=data.get("compressor_digest"),
            layers=tuple(data.get("layers", ())),
            values=bool(data.get("values", False)),
        )

    def check(self, needs: BankNeeds) -> None:
        """Raise `BankMismatchError` unless this bank holds what `needs` asks for."""
        if self.fingerprint.digest == needs.fingerprint.digest and not self.fingerprint.matches(needs.fingerprint):
            raise BankMismatchError(
                f"This memory bank was built with base model {self.fingerprint.describe()}, but it is being used "
                f"with {needs.fingerprint.describe()}: the same architecture, vocabulary and embeddings, but other "
                "layer weights (a fine-tune of the same base), which compute other KV. Rebuild the bank with this "
                "model's compress()."
            )
        if self.fingerprint.digest != needs.fingerprint.digest:
            raise BankMismatchError(
                f"This memory bank was built with base model {self.fingerprint.describe()}, but it is being used "
                f"with {needs.fingerprint.describe()}. Compressed KV only makes sense for the model that produced it: "
                "rebuild the bank with this model's compress()."
            )
        if needs.compression is None:
            return  # raw reading with a gate of words: every bank's token ids serve
        built = (self.chunk_size, self.compression, self.compressor_digest)
        if built != (needs.chunk_size, needs.compression, needs.compressor_digest):
            raise BankMismatchError(
                f"This memory bank was built with {self.describe()}, but the configuration reading it needs "
                f"{needs.describe()} ({' and '.join(needs.users)} {'read' if len(needs.users) > 1 else 'reads'} the "
                "bank's compressed KV). Rebuild the bank "
                "with this model's compress(), or read it with a configuration of the bank's own settings."
            )
        missing = sorted(set(needs.layers) - set(self.layers))
        if missing:
            raise BankMismatchError(
                f"The gate reads keys at layers {list(needs.layers)}, but this bank holds keys at layers "
                f"{list(self.layers)} only: rebuild it with this configuration's compress()."
            )
        if needs.values and not self.values:
            raise BankMismatchError(
                "reading mode 'compressed' needs a bank with compressed values at every layer, but this bank holds "
                "only the gate's keys (it was built for raw reading); rebuild it with this configuration's compress()."
            )


@dataclass(frozen=True)
class BankNeeds:
    """What a configuration reads from a bank. `compression` is None when it reads no compressed KV."""

    fingerprint: BaseFingerprint
    chunk_size: int
    compression: CompressionConfig | None
    compressor_digest: str | None
    layers: tuple[int, ...]
    values: bool
    users: tuple[str, ...] = ()  # the stages that read the KV, for messages

    def describe(self) -> str:
        if self.compression is None:
            return "token ids"
        held = f"keys at layers {list(self.layers)}" + (" and values" if self.values else "")
        trained = "" if self.compressor_digest is None else f" (compressor weights {self.compressor_digest[:12]})"
        return f"chunks of {self.chunk_size} tokens, {_compression_words(self.compression)}{trained}, {held}"


def _compression_words(compression: CompressionConfig) -> str:
    bits = "" if compression.bits == 16 else f", {compression.bits}-bit in groups of {compression.group}"
    if compression.method == "none":
        return f"every KV entry (method 'none'{bits})"
    score = f", score {compression.score!r}" if compression.score else ""
    return f"compression {compression.method!r} at ratio {compression.ratio:g}{score}{bits}"
