"""Schemas of the command lines that are not a run: the search worker (conf/search.yaml) and
the reproduction suite (conf/reproduce.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from sparsebench.errors import require


@dataclass
class SearchConfig:
    """``python -m sparsebench.search``: the worker's options (conf/search.yaml); the study
    itself is a sweep file."""

    sweep: str = MISSING
    n_trials: int | None = None
    storage: str | None = None
    workers: int = 1
    worker: int = 0
    trial_overrides: list[str] = field(default_factory=list)
    heartbeat_interval: int = 10
    grace_period: int = 30
    poll_s: float = 2.0
    max_failures: int = 3

    def __post_init__(self) -> None:
        require(
            self.n_trials is None or self.n_trials >= 1,
            f"n_trials must be >= 1, got {self.n_trials}.",
        )
        require(1 <= self.workers <= 256, f"workers must be in [1, 256], got {self.workers}.")
        require(self.worker >= 0, f"worker must be >= 0, got {self.worker}.")
        require(
            self.heartbeat_interval >= 1,
            f"heartbeat_interval must be >= 1 (seconds), got {self.heartbeat_interval}.",
        )
        require(
            self.grace_period > self.heartbeat_interval,
            f"grace_period must be longer than heartbeat_interval ({self.heartbeat_interval}), "
            f"got {self.grace_period}.",
        )
        require(self.poll_s > 0, f"poll_s must be > 0, got {self.poll_s}.")
        require(self.max_failures >= 1, f"max_failures must be >= 1, got {self.max_failures}.")


@dataclass
class ReproduceConfig:
    """``python -m sparsebench.reproduce``: which claims (sweeps/claims/NAME.yaml, or ``all``),
    the tier, and how to run them (conf/reproduce.yaml)."""

    claim: str = "all"
    tier: str = "quick"
    job: int | None = None  # run only this (arm, seed) job of the plan: for multirun launchers
    seeds: int | None = None  # fewer (or more) seeds than the claim file says; said in the report
    overrides: list[str] = field(default_factory=list)  # added to every run (e.g. logger=none)
    root: str = "outputs/claims"  # runs in ROOT/TIER/CLAIM/ARM-sSEED; the report in ROOT/TIER
    report: str | None = None  # also write the Markdown report here (e.g. docs/claims.md)

    def __post_init__(self) -> None:
        require(self.tier in ("quick", "full"), f"tier must be quick or full, got '{self.tier}'.")
        require(self.job is None or self.job >= 0, f"job must be >= 0, got {self.job}.")
        require(
            self.seeds is None or self.seeds >= 2,
            f"seeds must be >= 2 (a paired interval needs two pairs), got {self.seeds}.",
        )
