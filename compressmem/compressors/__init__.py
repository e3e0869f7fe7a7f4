"""Compressors turn a chunk into a memory block; `build_compressor` picks one from a `MemoryConfig`."""

from ..config import MemoryConfig
from .base import CompressedChunks, Compressor
from .select import SelectCompressor


def build_compressor(config: MemoryConfig) -> Compressor:
    if config.compressor == "select":
        return SelectCompressor(config.ratio, config.score)
    return Compressor()


__all__ = ["CompressedChunks", "Compressor", "SelectCompressor", "build_compressor"]
