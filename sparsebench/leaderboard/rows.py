"""Leaderboard rows: replicates aggregated over seeds, ranked, with Pareto fronts.

Runs are comparable only within one ``benchmark_key`` (dataset, model, hardware, budget).
Inside a key, runs with the same ``run_hash`` are replicates (they differ by seed only) and
become one row with mean, std and n of the task's quality (``RANKED_BY``: test accuracy for
classifiers, test perplexity for language models), ranked best first in the metric's declared
direction (``DIRECTIONS``). A row is on the quality-FLOPs front if no other row of its key is at
least as good with ``flops/sparse`` <= and one of them strictly better (equal rows are both on
it); the latency front is the same with ``latency/p50_ms``, computed only among rows whose
latencies are all measured or all estimated, never mixed.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sparsebench.record.contract import RANKED_BY, TASK_METRICS, better, contract_metrics
from sparsebench.record.results import STATUS_TAG

# A run as a leaderboard reads it (:mod:`sparsebench.leaderboard.read`): {"id", "name",
# "status" (MLflow's), "end_time", "experiment_id", "metrics": {METRICS}, "tags": {TAGS}}.
Run = dict
# All a leaderboard reads of a run: the contract's metrics (a run missing one does not rank) and
# the tags that group, label and filter rows.
METRICS = (
    *dict.fromkeys(m for task in TASK_METRICS for m in contract_metrics(task)),
    "train/samples",
    "speedup/train_measured",  # runs trained with trainer.sparse_kernels (absent otherwise)
)
TAGS = (
    "benchmark_key",
    "run_hash",
    "method",
    "pattern",
    "seed",
    "dataset",
    "model",
    "task",  # which contract: classification or language_modeling (absent: classification)
    "hardware",
    "latency/estimated",
    "latency/noisy",
    STATUS_TAG,
)

LEFT_OUT = ("running", "failed", "diverged", "interrupted", "pruned", "incomplete contract")


def admit(runs: Iterable[Run]) -> tuple[list[Run], dict[str, list[str]]]:
    """The runs a leaderboard may rank, and the others by reason (run names).

    Only complete ``ok`` runs rank: MLflow status FINISHED, lifecycle tag ``ok`` and every
    contract metric recorded and finite. Runs without a ``benchmark_key`` (sweep and study
    parents, leaderboard runs) are not results and are not counted."""
    admitted: list[Run] = []
    left: dict[str, list[str]] = defaultdict(list)
    by_mlflow = {
        "RUNNING": "running",
        "SCHEDULED": "running",
        "FAILED": "failed",
        "KILLED": "interrupted",
    }
    for run in runs:
        tags = run["tags"]
        if "benchmark_key" not in tags:
            continue
        status = tags.get(STATUS_TAG) or by_mlflow.get(run.get("status", "FINISHED"), "ok")
        if status == "ok" and run.get("status", "FINISHED") != "FINISHED":
            status = by_mlflow.get(run["status"], "failed")
        contract = contract_metrics(tags.get("task", "classification"))
        missing = [k for k in contract if not math.isfinite(run["metrics"].get(k, math.nan))]
        reason = status if status != "ok" else "incomplete contract" if missing else None
        if reason is None:
            admitted.append(run)
        else:
            name = run.get("name") or tags.get("run_hash", "?")
            left[reason if reason in LEFT_OUT else "failed"].append(name)
    return admitted, dict(left)


def describe_left_out(left: dict[str, list[str]], shown: int = 3) -> str | None:
    """One sentence naming the runs a leaderboard left out, or None."""
    if not left:
        return None
    parts = []
    for reason in LEFT_OUT:
        names = left.get(reason, [])
        if names:
            more = f", +{len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{len(names)} {reason} ({', '.join(names[:shown])}{more})")
    total = sum(len(v) for v in left.values())
    return (
        f"left out {total} run{'s' if total > 1 else ''} that are not complete ok runs: "
        f"{'; '.join(parts)}."
    )


@dataclass
class Row:
    benchmark_key: str
    run_hash: str
    method: str
    n: int
    metric: str  # the quality ranked (RANKED_BY of the runs' task): test/acc, test/ppl
    mean: float
    std: float
    flops_sparse: float | None
    flops_dense: float | None
    flops_train: float | None
    latency_ms: float | None
    latency_estimated: bool
    sparsity: float | None
    latency_noisy: bool = False  # a replicate's latency was timed on a busy machine or wide
    speedup: float | None = None  # inference: speedup/measured (the target's dense kernels = 1)
    train_speedup: float | None = None  # training step: speedup/train_measured (sparse kernels)
    seeds: list[str] = field(default_factory=list)
    pattern: str = ""  # dense, unstructured, 2:4, ... (runs before the tag existed: empty)
    train_samples: float | None = None  # training samples seen, all fits (soups, IMP) included
    rank: int = 0
    flops_front: bool = False
    latency_front: bool = False
    budget_differs: bool = False

    @property
    def score(self) -> float:
        """The quality signed so that larger is better (perplexity: its negative)."""
        return better(self.metric, self.mean)


# What a reader sees of a row, in order, under these headings (terminal, Markdown and HTML; the
# CSV keeps the field names and adds the rest); the benchmark key heads each group instead.
HEADINGS = {
    "rank": "#",
    "method": "method",
    "pattern": "pattern",
    "n": "n",
    "mean": "test acc",  # the quality: named by the key's metric (heading())
    "std": "± std",
    "sparsity": "sparsity",
    "flops_sparse": "FLOPs",
    "latency_ms": "latency ms",
    "latency_estimated": "est.",
    "latency_noisy": "noisy",
    "speedup": "speed-up",
    "train_speedup": "train speed-up",
    "flops_front": "front FLOPs",
    "latency_front": "front ms",
    "budget_differs": "budget",
    "run_hash": "run hash",
}
SHOWN = tuple(HEADINGS)


@dataclass(frozen=True)
class Quality:
    """How a task's ranked quality is shown: its column, its name in plot titles, its axis
    title, digits, and a log axis (perplexity; its direction is the contract's)."""

    heading: str
    name: str
    axis: str
    digits: int
    log: bool = False


QUALITIES = {
    "test/acc": Quality("test acc", "accuracy", "test accuracy", 4),
    "test/ppl": Quality("test ppl", "perplexity", "test perplexity (lower is better)", 2, True),
}


def heading(column: str, rows: list[Row]) -> str:
    """A column's heading over ``rows`` (one key's): the quality column is named by its
    metric (test acc, test ppl)."""
    if column == "mean" and rows:
        return QUALITIES[rows[0].metric].heading
    return HEADINGS[column]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else None


def aggregate(runs: Iterable[Run]) -> list[Row]:
    """One row per (benchmark_key, run_hash): mean/std/n of the task's quality (test/acc,
    test/ppl) and means of the rest."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        tags = run["tags"]
        metric = RANKED_BY[tags.get("task", "classification")]
        if metric not in run["metrics"] or "benchmark_key" not in tags:
            continue  # failed or foreign runs have no place on a leaderboard
        groups[(tags["benchmark_key"], tags.get("run_hash", ""))].append(run)
    rows = []
    for (key, run_hash), members in groups.items():
        metric = RANKED_BY[members[0]["tags"].get("task", "classification")]
        values = [m["metrics"][metric] for m in members]

        def mean_of(name: str, members=members) -> float | None:
            return _mean([m["metrics"].get(name) for m in members])

        rows.append(
            Row(
                benchmark_key=key,
                run_hash=run_hash,
                method=members[0]["tags"].get("method", "?"),
                n=len(members),
                metric=metric,
                mean=statistics.fmean(values),
                std=statistics.stdev(values) if len(values) > 1 else 0.0,
                flops_sparse=mean_of("flops/sparse"),
                flops_dense=mean_of("flops/dense"),
                flops_train=mean_of("flops/train"),
                latency_ms=mean_of("latency/p50_ms"),
                latency_estimated=members[0]["tags"].get("latency/estimated") == "true",
                latency_noisy=any(m["tags"].get("latency/noisy") == "true" for m in members),
                speedup=mean_of("speedup/measured"),
                train_speedup=mean_of("speedup/train_measured"),
                sparsity=mean_of("sparsity/actual"),
                seeds=sorted(m["tags"].get("seed", "?") for m in members),
                pattern=members[0]["tags"].get("pattern", ""),
                train_samples=mean_of("train/samples"),
            )
        )
    mark(rows)
    return sorted(rows, key=lambda r: (r.benchmark_key, r.rank))


def _front(rows: list[Row], cost: str) -> set[int]:
    """Indices of rows not dominated in (better quality, lower cost); rows without cost skipped.

    One sweep in order of cost (n log n: a key may hold thousands of rows): a row is on the
    front when it is the best at its cost and better than every cheaper row."""
    candidates = sorted(
        (getattr(r, cost), i) for i, r in enumerate(rows) if getattr(r, cost) is not None
    )
    front: set[int] = set()
    best_cheaper = -math.inf
    start = 0
    while start < len(candidates):
        end = start
        while end < len(candidates) and candidates[end][0] == candidates[start][0]:
            end += 1
        tied = [rows[i] for _, i in candidates[start:end]]
        best_here = max(r.score for r in tied)
        for _, i in candidates[start:end]:
            if rows[i].score == best_here and rows[i].score > best_cheaper:
                front.add(i)
        best_cheaper = max(best_cheaper, best_here)
        start = end
    return front


BUDGET_TOLERANCE = 0.1  # a budget more than 10% away from its group's median is flagged


def budgets_differ(budgets: list[float | None], tolerance: float = BUDGET_TOLERANCE) -> list[bool]:
    """Per budget, whether it differs from the median of the known ones by more than
    ``tolerance`` (relative); unknown budgets (None, 0) are never flagged."""
    known = [b for b in budgets if b]
    if not known:
        return [False] * len(budgets)
    reference = statistics.median(known)
    return [bool(b) and abs(b / reference - 1) > tolerance for b in budgets]


def mark(rows: list[Row], budget_tolerance: float = BUDGET_TOLERANCE) -> None:
    """Set rank, both fronts and the budget flag within each benchmark_key."""
    by_key: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_key[row.benchmark_key].append(row)
    for members in by_key.values():
        for rank, row in enumerate(sorted(members, key=lambda r: -r.score), start=1):
            row.rank = rank
        for i in _front(members, "flops_sparse"):
            members[i].flops_front = True
        for estimated in (False, True):  # never mix measured and estimated latency
            subset = [r for r in members if r.latency_estimated == estimated]
            for i in _front(subset, "latency_ms"):
                subset[i].latency_front = True
        # The budget is the training samples seen (several fits of soups or IMP count); sparse
        # training at other sparsities costs other FLOPs by design and is not flagged. Keys
        # holding runs from before `train/samples` existed compare `flops/train` instead.
        attr = "train_samples" if all(r.train_samples for r in members) else "flops_train"
        flags = budgets_differ([getattr(r, attr) for r in members], budget_tolerance)
        for row, flag in zip(members, flags, strict=True):
            row.budget_differs = flag
