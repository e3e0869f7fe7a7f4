"""compressmem: answer questions over contexts of millions of tokens with any Hugging Face causal LM."""

from .bank import BankMismatchError, MemoryBank, MemoryBlock
from .chunking import ContextError, text_pieces
from .config import ConfigError, MemoryConfig
from .embedded import DEFAULT_MODEL
from .hub import CheckpointMismatchError
from .model import CompressedGenerateOutput, CompressedMemoryModel
from .reasoner import ReadStep, Trace

__all__ = [
    "BankMismatchError", "CheckpointMismatchError", "CompressedGenerateOutput", "CompressedMemoryModel",
    "ConfigError", "ContextError", "DEFAULT_MODEL", "MemoryBank", "MemoryBlock", "MemoryConfig", "ReadStep", "Trace",
    "text_pieces",
]

__version__ = "0.1.0"
