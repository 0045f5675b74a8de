"""A self-contained HTML leaderboard: the table and interactive accuracy-vs-FLOPs and
accuracy-vs-latency plots per benchmark_key (plotly, its JavaScript embedded so the file works
offline), with the dense baseline drawn as a line and Pareto-front rows highlighted."""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import plotly.graph_objects as go

from sparsebench.tracking.leaderboard import Row

COLUMNS = ("rank", "method", "pattern", "n", "acc_mean", "acc_std", "sparsity", "flops_sparse", "latency_ms",
           "flops_front", "latency_front", "budget_differs", "run_hash")  # fmt: skip


def _cell(value) -> str:
    if isinstance(value, bool):
        return "&#9733;" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else html.escape(str(value))


def _label(row: Row) -> str:
    pattern = f" {row.pattern}" if row.pattern not in ("", "unstructured", "dense") else ""
    sparsity = "" if row.sparsity is None else f" {row.sparsity:.2f}"
    return f"{row.method}{pattern}{sparsity}"


def _figure(rows: list[Row], cost: str, title: str) -> go.Figure:
    figure = go.Figure()
    front_attr = "flops_front" if cost == "flops_sparse" else "latency_front"
    for estimated in (False, True):  # measured and estimated latencies as separate series
        subset = [
            r
            for r in rows
            if getattr(r, cost) is not None
            and (cost == "flops_sparse" or r.latency_estimated == estimated)
        ]
        if not subset or (cost == "flops_sparse" and estimated):
            continue
        suffix = " (estimated)" if estimated and cost != "flops_sparse" else ""
        figure.add_trace(go.Scatter(
            x=[getattr(r, cost) for r in subset], y=[r.acc_mean for r in subset],
            mode="markers+text", textposition="top center",
            error_y={"type": "data", "array": [r.acc_std for r in subset]},
            marker={"size": [14 if getattr(r, front_attr) else 8 for r in subset],
                    "symbol": ["star" if getattr(r, front_attr) else "circle" for r in subset]},
            text=[_label(r) for r in subset],
            hovertext=[f"{r.method} (n={r.n}, sparsity {r.sparsity or 0:.2f}, {r.run_hash})" for r in subset],
            name=f"runs{suffix}",
        ))  # fmt: skip
    dense = [r for r in rows if r.method == "dense"]
    if dense:
        best = max(dense, key=lambda r: r.acc_mean)
        figure.add_hline(
            y=best.acc_mean, line_dash="dash", annotation_text=f"dense baseline {best.acc_mean:.4f}"
        )
    figure.update_layout(title=title, xaxis_title=cost.replace("_", " "), yaxis_title="test accuracy",
                         xaxis_type="log", height=420)  # fmt: skip
    return figure


def html_report(rows: list[Row], path: Path, title: str = "sparsebench leaderboard") -> Path:
    """Write the report to ``path`` and return it."""
    by_key: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_key[row.benchmark_key].append(row)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]  # fmt: skip
    include_js = True
    for key, members in sorted(by_key.items()):
        parts.append(f"<h2>{html.escape(key)}</h2><table class='leaderboard'><tr>")
        parts += [f"<th>{c}</th>" for c in COLUMNS] + ["</tr>"]
        for row in sorted(members, key=lambda r: r.rank):
            parts.append(
                "<tr>" + "".join(f"<td>{_cell(getattr(row, c))}</td>" for c in COLUMNS) + "</tr>"
            )
        parts.append("</table>")
        for cost, label in (
            ("flops_sparse", "accuracy vs FLOPs"),
            ("latency_ms", "accuracy vs latency"),
        ):
            figure = _figure(members, cost, f"{key}: {label}")
            parts.append(figure.to_html(full_html=False, include_plotlyjs=include_js))
            include_js = False  # embedded once, offline
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path


# Headless Chromium renders the report exactly as a browser would (plotly draws with JavaScript,
# so only a real browser engine shows whether the plots appear); no Python library renders it.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HEADLESS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--no-first-run", "--hide-scrollbars",
            "--mute-audio", "--virtual-time-budget=15000")  # fmt: skip


def find_browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    raise FileNotFoundError(
        f"rendering the report needs Chromium or Chrome on PATH ({', '.join(BROWSERS)}); "
        "none was found (Debian: apt-get install chromium)."
    )


def _chromium(html_path: Path, *flags: str, timeout: float) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [find_browser(), *HEADLESS, f"--user-data-dir={profile}", *flags,
             Path(html_path).resolve().as_uri()],  # fmt: skip
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed on {html_path}: {proc.stderr[-2000:]}")
    return proc.stdout


def rendered_dom(html_path: Path, timeout: float = 120) -> str:
    """The page's DOM after its scripts ran (plotly's SVG included)."""
    return _chromium(html_path, "--dump-dom", timeout=timeout)


def screenshot(html_path: Path, png_path: Path, width: int = 1400, height: int | None = None,
               timeout: float = 120) -> Path:  # fmt: skip
    """A PNG of the rendered report; the default height fits the whole page."""
    if height is None:  # the whole page: per board a heading, its table rows, two plots
        page = Path(html_path).read_text()
        boards = max(1, page.count("<table class='leaderboard'>"))
        height = 150 + boards * (100 + 2 * 470) + 32 * page.count("<tr>")
    _chromium(html_path, f"--screenshot={Path(png_path).resolve()}",
              f"--window-size={width},{height}", timeout=timeout)  # fmt: skip
    return Path(png_path)
