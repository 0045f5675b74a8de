"""The results contract (docs/records.md): the metrics and tags every finished run records,
per task, and which way each metric is better."""

from __future__ import annotations

# The results contract (docs/records.md): every run writes these metrics and tags; the quality
# metrics depend on the run's task (the dataset's ``task``), the rest are the same for every run.
TASK_METRICS = {
    "classification": ("test/acc", "test/loss", "val/acc"),
    "language_modeling": ("test/ppl", "test/loss", "val/ppl"),
}
COMMON_METRICS = (
    "params/total",
    "params/nonzero",
    "sparsity/target",
    "sparsity/actual",
    "flops/dense",
    "flops/sparse",
    "flops/train",
    "latency/p50_ms",
    "latency/p90_ms",
    "latency/dense_p50_ms",
    "speedup/measured",
    "speedup/theoretical",
    "size/dense_bytes",
    "size/sparse_bytes",
    "time/train_s",
)
CONTRACT_METRICS = (*TASK_METRICS["classification"], *COMMON_METRICS)
"""The classification contract (image and signal datasets)."""


def contract_metrics(task: str = "classification") -> tuple[str, ...]:
    """The metrics a finished ``ok`` run of ``task`` has recorded."""
    return (*TASK_METRICS[task], *COMMON_METRICS)


# Which way each contract metric is better, declared once: the leaderboard's ranks and fronts,
# its HTML report, the MLflow runs view and a search's objectives read it here.
MAXIMIZE, MINIMIZE = "maximize", "minimize"
DIRECTIONS = {
    **{m: MAXIMIZE for m in ("test/acc", "val/acc", "sparsity/target", "sparsity/actual")},
    **{m: MAXIMIZE for m in ("speedup/measured", "speedup/theoretical", "speedup/train_measured")},
    **{m: MINIMIZE for m in ("test/ppl", "val/ppl", "test/loss", "val/loss")},
    **{m: MINIMIZE for m in COMMON_METRICS if m.split("/")[0] in ("params", "flops", "size")},
    **{m: MINIMIZE for m in COMMON_METRICS if m.split("/")[0] in ("latency", "time")},
}
# The quality a task's runs are ranked by (lowest perplexity first for language models), and
# the one a search or a trial pruner selects on.
RANKED_BY = {"classification": "test/acc", "language_modeling": "test/ppl"}
VALIDATED_BY = {"classification": "val/acc", "language_modeling": "val/ppl"}


def better(metric: str, value: float) -> float:
    """``value`` signed so that larger is better (for sorting and Pareto fronts)."""
    return value if DIRECTIONS[metric] == MAXIMIZE else -value


CONTRACT_TAGS = (
    "run_hash",
    "benchmark_key",
    "model",
    "dataset",
    "method",
    "pattern",
    "hardware",
    "seed",
    "git_sha",
    "version/torch",
    "version/sparsebench",
    "hw/cpu",
    "hw/threads",
)
