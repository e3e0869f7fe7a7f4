"""compressmem: answer questions over contexts of millions of tokens with any Hugging Face causal LM."""

from .bank import MemoryBank, MemoryBlock
from .chunking import text_pieces
from .config import (
    ChunkingConfig,
    CompressionConfig,
    GateConfig,
    MemoryConfig,
    NotesConfig,
    PromptConfig,
    ReadingConfig,
)
from .embedded import DEFAULT_MODEL
from .errors import BankMismatchError, CheckpointMismatchError, ConfigError, ContextError, GateHeadError
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
    "GateHeadError",
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

__version__ = "0.5.0"
