"""Compressors turn a chunk into a memory block; `build_compressor` picks a training-free one from its settings."""

from ..config import CompressionConfig
from .base import CompressedChunks, Compressor
from .learned import LearnedCompressor
from .select import SelectCompressor


def build_compressor(compression: CompressionConfig) -> Compressor:
    """The training-free compressor `compression` names; a learned one comes with its trained weights."""
    if compression.method == "learned":
        raise ValueError(
            "compression method 'learned' needs trained weights: load a checkpoint that has them with "
            "from_pretrained(base, checkpoint=CHECKPOINT), pass compressor=LearnedCompressor..., or start "
            "one for training with LearnedCompressor.initialise(model, ratio, chunk_size)."
        )
    if compression.method == "select":
        return SelectCompressor(compression.ratio, compression.score)
    return Compressor()


__all__ = ["CompressedChunks", "Compressor", "LearnedCompressor", "SelectCompressor", "build_compressor"]
