"""Every error the library raises for a user's input, in one leaf module that imports nothing of the package.

Any module (and a user's `except` clause) can name them without pulling in the stage that raises them.
Each is a `ValueError` (a `RuntimeError` for processes that disagree), so code written against the
builtin types keeps working.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is out of range, of the wrong kind, or would be ignored by the stage it belongs to."""


class ContextError(ValueError):
    """The context cannot be read: empty, of the wrong type, or the wrong shape."""


class BankMismatchError(ValueError):
    """The bank was built for another base model, does not hold what the configuration reading it needs, or is
    damaged."""


class CheckpointMismatchError(ValueError):
    """A compressmem checkpoint was made for another base model, by a newer compressmem, or is damaged."""


class GateHeadError(ValueError):
    """A gate head file is malformed or does not fit the model or configuration it is used with."""


class SigningError(ValueError):
    """A key cannot sign or check a bank: not a key, a public key given to sign, or `cryptography` missing."""


class ProcessMismatchError(RuntimeError):
    """The processes sharing a compression did not read the same text into the same folder with the same model."""


__all__ = [
    "BankMismatchError",
    "CheckpointMismatchError",
    "ConfigError",
    "ContextError",
    "GateHeadError",
    "ProcessMismatchError",
    "SigningError",
]
