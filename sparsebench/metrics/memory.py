"""Peak memory of a block of work (post-training pruning reports it as ``memory/peak_mb``)."""

from __future__ import annotations

import threading

import psutil
import torch


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 5 ms; on a GPU
    torch's peak allocation is added), in MB."""

    def __enter__(self) -> PeakMemory:
        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(0.005)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.mb = self.peak / 2**20
        if torch.cuda.is_available():
            self.mb += torch.cuda.max_memory_allocated() / 2**20
