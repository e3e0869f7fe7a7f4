"""`compressmem ask|compress|eval|train`: answer a question over a long file, compress it into a bank, run the
evaluation suite, or train a part of compressmem. One module per command; `options` holds what they share."""

from .main import main

__all__ = ["main"]
