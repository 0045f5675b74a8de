"""The summary table printed at the end of a run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

ROWS = (
    ("test/acc", "test accuracy", "{:.4f}"),
    ("test/acc_dense", "test accuracy before pruning", "{:.4f}"),
    ("val/acc", "val accuracy", "{:.4f}"),
    ("test/ppl", "test perplexity", "{:.2f}"),
    ("test/ppl_dense", "test perplexity before pruning", "{:.2f}"),
    ("val/ppl", "val perplexity", "{:.2f}"),
    ("test/loss", "test loss", "{:.4f}"),
    ("params/total", "parameters", "{:,.0f}"),
    ("params/nonzero", "nonzero parameters", "{:,.0f}"),
    ("sparsity/actual", "sparsity (prunable)", "{:.3f}"),
    ("flops/dense", "FLOPs/sample dense", "{:,.0f}"),
    ("flops/sparse", "FLOPs/sample sparse", "{:,.0f}"),
    ("flops/train", "training FLOPs", "{:.3e}"),
    ("latency/p50_ms", "latency p50 (ms)", "{:.3f}"),
    ("latency/p90_ms", "latency p90 (ms)", "{:.3f}"),
    ("latency/dense_p50_ms", "dense latency p50 (ms)", "{:.3f}"),
    ("speedup/measured", "speed-up measured", "{:.2f}x"),
    ("speedup/theoretical", "speed-up theoretical", "{:.2f}x"),
    ("size/sparse_bytes", "weights stored (bytes)", "{:,.0f}"),
    ("throughput/tokens_per_s", "tokens/s", "{:,.0f}"),
    ("time/train_s", "train time (s)", "{:.1f}"),
    ("time/search_s", "search time (s)", "{:.1f}"),
    ("time/prune_s", "prune time (s)", "{:.2f}"),
    ("memory/peak_mb", "peak memory while pruning (MB)", "{:,.0f}"),
)


def summary_table(
    metrics: dict[str, float], tags: dict[str, str], title: str = "sparsebench"
) -> Table:
    table = Table(
        title=f"{title}: {tags.get('method')} {tags.get('model')} on {tags.get('dataset')}"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    per_token = tags.get("task") == "language_modeling"  # FLOPs of a language model per token
    for key, label, fmt in ROWS:
        if key in metrics:
            label = label.replace("/sample", "/token") if per_token else label
            table.add_row(label, fmt.format(metrics[key]))
    estimated = " (estimated)" if tags.get("latency/estimated") == "true" else ""
    table.add_row(
        "hardware", f"{tags.get('hardware')}{estimated} ({tags.get('hw/threads', '?')} threads)"
    )
    table.add_row("run_hash", tags.get("run_hash", ""))
    return table


def print_summary(
    metrics: dict[str, float], tags: dict[str, str], notes: list[str] | None = None
) -> None:
    console = Console()
    console.print(summary_table(metrics, tags))
    for note in notes or []:
        console.print(note, soft_wrap=True)  # keep commands copy-pasteable
