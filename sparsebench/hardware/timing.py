"""Latency that states its noise: models timed interleaved until their medians are pinned down.

Dense and sparse models are timed in alternating blocks of about 10 ms (torch.utils.benchmark's
``Timer.timeit``; the order flips every round), so that drift of the machine (frequency, other
work) falls on both and cancels in their ratio. Rounds continue until the 95% interval of every
model's median block time is within ``rel`` of it (order statistics, ``scipy.stats.quantile_test``),
at least ``min_run_time`` has passed and 10 rounds were taken, or ``max_run_time`` ends.

While it times, the CPU time the rest of the machine used on this process's CPUs is measured:
other processes, and other threads of this process (a busy thread beside the timing). The
1-minute load average is recorded too, but it lags by a minute and counts this run's own
training, so the noise verdict reads the measured competition instead.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psutil
import torch
from scipy import stats

MIN_ROUNDS = 10
BLOCK_SECONDS = 0.01
REL_INTERVAL = 0.05  # the issue's +-5%: a p50 known to within 5% either way


@dataclass
class Timing:
    """Per-call seconds of one model's timed blocks: median, p90 and the median's 95% interval."""

    p50: float
    p90: float
    low: float
    high: float
    blocks: int

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        x = np.asarray(samples)
        interval = stats.quantile_test(x, q=float(np.median(x)), p=0.5).confidence_interval(0.95)
        low, high = float(interval.low), float(interval.high)
        return cls(
            float(np.percentile(x, 50)),
            float(np.percentile(x, 90)),
            low if math.isfinite(low) else 0.0,
            high if math.isfinite(high) else math.inf,
            len(x),
        )

    @property
    def rel_halfwidth(self) -> float:
        """The interval's larger half-width, relative to the median."""
        return max(self.p50 - self.low, self.high - self.p50) / self.p50


def timing_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity: a SLURM job's share of a node)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity API
        return list(range(psutil.cpu_count() or 1))


def _busy(times) -> float:
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class LoadProbe:
    """CPU seconds the rest of the machine used on this process's CPUs over a time window."""

    def __init__(self) -> None:
        self.cpus = timing_cpus()
        self.process = psutil.Process()
        self.start = self.read()

    def read(self) -> tuple[float, float, dict[int, float], float]:
        per_cpu = psutil.cpu_times(percpu=True)
        machine = sum(_busy(per_cpu[i]) for i in self.cpus if i < len(per_cpu))
        own = self.process.cpu_times()
        me = threading.get_native_id()
        ours = {t.native_id for t in threading.enumerate()} - {me}  # our other Python threads
        others = {t.id: t.user_time + t.system_time for t in self.process.threads() if t.id in ours}
        return machine, own.user + own.system, others, time.perf_counter()

    def competing(self) -> float:
        """Cores' worth of CPU others used since the probe began."""
        (m0, own0, th0, t0), (m1, own1, th1, t1) = self.start, self.read()
        threads = sum(v - th0.get(k, 0.0) for k, v in th1.items())
        return max(0.0, ((m1 - m0) - (own1 - own0) + threads) / max(t1 - t0, 1e-9))


@dataclass
class Noise:
    """What the machine was doing while it timed, and whether the figures can be trusted."""

    competing: float  # cores' worth of CPU other work used during the timing
    load_avg: float  # the 1-minute load average at the end
    cores: int  # CPUs this process may use
    threads: int  # threads the timing used
    rel_halfwidth: float  # the widest relative half-width of the timed medians
    reasons: list[str]

    @property
    def noisy(self) -> bool:
        return bool(self.reasons)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    threads: int,
    warmup: int,
    min_run_time: float,
    max_run_time: float,
    rel: float = REL_INTERVAL,
) -> tuple[dict[str, Timing], Noise]:
    """Time each of ``fns`` in alternating blocks until every median is within ``rel`` (95%),
    or ``max_run_time`` ends; and judge the noise (:class:`Noise`)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        # Imported here: torch.utils.benchmark loads torch's C++-extension tooling, which warns
        # about CUDA on import; a run that fails its config checks never needs it.
        from torch.utils import benchmark

        timers = {
            k: benchmark.Timer(stmt="fn()", globals={"fn": f}, num_threads=threads)
            for k, f in fns.items()
        }
        number = {
            k: max(1, int(BLOCK_SECONDS / max(t.timeit(number=1).median, 1e-9)))
            for k, t in timers.items()
        }
        samples: dict[str, list[float]] = {k: [] for k in fns}
        probe, start = LoadProbe(), time.perf_counter()
        names = list(fns)
        while True:
            for k in names:
                samples[k].append(timers[k].timeit(number=number[k]).median)
            names.reverse()  # A B, B A, ...: what drifts within a round falls on both
            elapsed = time.perf_counter() - start
            if len(samples[names[0]]) < MIN_ROUNDS or elapsed < min_run_time:
                continue
            timings = {k: Timing.of(v) for k, v in samples.items()}
            if elapsed >= max_run_time or all(t.rel_halfwidth <= rel for t in timings.values()):
                break
        competing = probe.competing()
    finally:
        torch.set_num_threads(previous)
    return timings, judge(timings, competing, threads, len(probe.cpus), rel)


def judge(
    timings: dict[str, Timing],
    competing: float,
    threads: int,
    cores: int,
    rel: float = REL_INTERVAL,
) -> Noise:
    """Noisy when a median's interval is wider than ``rel`` or when other work took CPU the
    timing's threads needed (more than the cores they left free, with a quarter core of slack
    for the system's own daemons)."""
    reasons = [
        f"the p50 of {k} is known only to +-{t.rel_halfwidth:.0%} (95% interval, "
        f"{t.blocks} blocks; wanted +-{rel:.0%})"
        for k, t in timings.items()
        if not t.rel_halfwidth <= rel
    ]
    if competing > max(0, cores - threads) + 0.25:
        reasons.append(
            f"other work used {competing:.1f} cores beside {threads} timing "
            f"thread{'s' if threads > 1 else ''} on {cores} cores"
        )
    widest = max(t.rel_halfwidth for t in timings.values())
    return Noise(
        competing,
        os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
        cores,
        threads,
        widest,
        reasons,
    )
