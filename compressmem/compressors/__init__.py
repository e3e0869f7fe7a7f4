"""Compressors turn a chunk into a memory block; `build_compressor` picks one from a `MemoryConfig`."""

from ..config import MemoryConfig
from .base import CompressedChunks, Compressor
from .learned import LearnedCompressor
from .select import SelectCompressor


def build_compressor(config: MemoryConfig) -> Compressor:
    """The training-free compressor a configuration names; a learned one comes with its trained weights."""
    if config.compressor == "learned":
        raise ValueError("compressor='learned' needs trained weights: load a checkpoint that has them with "
                         "from_pretrained(base, memory=CHECKPOINT), pass compressor=LearnedCompressor..., or start "
                         "one for training with LearnedCompressor.initialise(model, ratio, chunk_size).")
    if config.compressor == "select":
        return SelectCompressor(config.ratio, config.score)
    return Compressor()


__all__ = ["CompressedChunks", "Compressor", "LearnedCompressor", "SelectCompressor", "build_compressor"]
