"""Peak memory of a block of code: GPU allocator peak on CUDA, sampled process RSS on the CPU."""

from __future__ import annotations

import os
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_rss() -> int:
    """Resident set size of this process in bytes; where there is no `/proc` (macOS), the peak so far."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except FileNotFoundError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def available_bytes() -> int | None:
    """Memory the system can give this process now without swapping (Linux's MemAvailable), or None where it
    cannot tell."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return None


class PeakMemory:
    """`with PeakMemory(device) as peak: ...`, then `peak.peak_bytes` and `peak.increase_bytes`.

    On CUDA it reads `torch.cuda.max_memory_allocated` (reset on entry); on the CPU a thread samples
    the process RSS every `interval` seconds, since the kernel's own high-water mark cannot be reset.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.baseline_bytes = self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def increase_bytes(self) -> int:
        """How far the peak rose above the memory in use on entry."""
        return self.peak_bytes - self.baseline_bytes

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = self.peak_bytes = torch.cuda.memory_allocated(self.device)
            return self
        self.baseline_bytes = self.peak_bytes = process_rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, process_rss())

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, process_rss())
            time.sleep(self.interval)
