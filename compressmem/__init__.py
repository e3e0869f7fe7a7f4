"""compressmem: answer questions over contexts of millions of tokens with any Hugging Face causal LM."""

from .bank import BankMismatchError, MemoryBank, MemoryBlock
from .chunking import ContextError, text_pieces
from .config import (
    ChunkingConfig,
    CompressionConfig,
    ConfigError,
    GateConfig,
    MemoryConfig,
    NotesConfig,
    PromptConfig,
    ReadingConfig,
)
from .embedded import DEFAULT_MODEL
from .hub import CheckpointMismatchError
from .model import Answer, CompressedGenerateOutput, CompressedMemoryModel
from .reader import ReadStep, Source, Trace

__all__ = [
    "DEFAULT_MODEL",
    "Answer",
    "BankMismatchError",
    "CheckpointMismatchError",
    "ChunkingConfig",
    "CompressedGenerateOutput",
    "CompressedMemoryModel",
    "CompressionConfig",
    "ConfigError",
    "ContextError",
    "GateConfig",
    "MemoryBank",
    "MemoryBlock",
    "MemoryConfig",
    "NotesConfig",
    "PromptConfig",
    "ReadStep",
    "ReadingConfig",
    "Source",
    "Trace",
    "text_pieces",
]

__version__ = "0.2.0"
