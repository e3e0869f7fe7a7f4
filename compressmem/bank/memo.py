"""`Memo`: objects this process derives from a bank's blocks (a gate's unpacked index), made once per bank."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Memo:
    """A thread-safe map from a key to what was made for it once."""

    def __init__(self) -> None:
        self._made: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], T]) -> T:
        """The object made for `key`, making it with `make()` the first time."""
        with self._lock:
            if key in self._made:
                return self._made[key]
        made = make()  # outside the lock: two threads may both make it, and the first one kept is returned
        with self._lock:
            return self._made.setdefault(key, made)
