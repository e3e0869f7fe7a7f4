"""Compressors turn a chunk into a memory block; `build_compressor` picks a training-free one from its settings."""

from ..config import DEFAULT_RATIO, DEFAULT_SCORE, CompressionConfig
from .base import CompressedChunks, Compressor
from .learned import LearnedCompressor
from .lychee import LycheeCompressor, LycheeSettings
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
        ratio = DEFAULT_RATIO if compression.ratio is None else compression.ratio
        return SelectCompressor(ratio, DEFAULT_SCORE if compression.score is None else compression.score)
    return Compressor()


__all__ = [
    "CompressedChunks",
    "Compressor",
    "LearnedCompressor",
    "LycheeCompressor",
    "LycheeSettings",
    "SelectCompressor",
    "build_compressor",
]
