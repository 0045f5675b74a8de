"""The HTML leaderboard: per benchmark_key the table (:func:`.render.html_table`) and
interactive quality-vs-FLOPs and quality-vs-latency plots (plotly; accuracy, or perplexity on a
reversed log axis for language models): a colour and legend entry
per method, a marker per sparsity pattern, the Pareto front drawn as a step line, the dense
baseline as a dashed line, and a plot only where there are two points to compare. plotly's
JavaScript is written once beside the page (``plotly.min.js``), so the page is small and works
offline."""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import plotly.graph_objects as go

from sparsebench.leaderboard.render import html_table
from sparsebench.leaderboard.rows import QUALITIES, Row
from sparsebench.record.contract import DIRECTIONS, MINIMIZE


def _label(row: Row) -> str:
    pattern = f" {row.pattern}" if row.pattern not in ("", "unstructured", "dense") else ""
    sparsity = "" if row.sparsity is None else f" {row.sparsity:.2f}"
    return f"{row.method}{pattern}{sparsity}"


SYMBOLS = {"dense": "x", "unstructured": "circle", "channel": "triangle-up", "monarch": "star"}
COST_TITLES = {"flops_sparse": "FLOPs per sample (sparse)", "latency_ms": "latency p50 (ms)"}


def _symbol(pattern: str) -> str:
    if ":" in pattern:
        return "diamond"  # N:M
    return "square" if pattern.startswith("block") else SYMBOLS.get(pattern, "circle")


def _quality_axis(metric: str, values: list[float]) -> dict:
    """The y axis of a quality: accuracy on [0, 1] around the points; perplexity on a log
    scale, reversed so that better is up on every plot."""
    quality = QUALITIES[metric]
    if quality.log:
        reversed_ = DIRECTIONS[metric] == MINIMIZE
        return {
            "title": quality.axis,
            "type": "log",
            **({"autorange": "reversed"} if reversed_ else {}),
        }
    pad = max(0.02, (max(values) - min(values)) * 0.15)
    return {
        "title": quality.axis,
        "range": [max(0.0, min(values) - pad), min(1.0, max(values) + pad)],
    }


def _figure(rows: list[Row], cost: str, title: str) -> go.Figure | None:
    """Quality against ``cost``; None when fewer than two rows have it (nothing to compare).
    Measured and estimated latencies are never plotted together (estimated: its own plot)."""
    points = [r for r in rows if getattr(r, cost) is not None]
    if cost == "latency_ms":
        measured = [r for r in points if not r.latency_estimated]
        points = measured if len(measured) >= 2 else [r for r in points if r.latency_estimated]
    if len(points) < 2:
        return None
    figure = go.Figure()
    for method in sorted({r.method for r in points}):  # one colour and legend entry per method
        mine = [r for r in points if r.method == method]
        figure.add_trace(
            go.Scatter(
                x=[getattr(r, cost) for r in mine],
                y=[r.mean for r in mine],
                mode="markers",
                name=method,
                error_y={"type": "data", "array": [r.std for r in mine]},
                marker={
                    "size": 11,
                    "symbol": [_symbol(r.pattern) for r in mine],
                    "line": {"width": 1, "color": "#333"},
                },
                hovertext=[f"{_label(r)} (n={r.n}, {r.pattern}, {r.run_hash})" for r in mine],
                hoverinfo="text+x+y",
            )
        )
    front_attr = "flops_front" if cost == "flops_sparse" else "latency_front"
    front = sorted((r for r in points if getattr(r, front_attr)), key=lambda r: getattr(r, cost))
    if len(front) >= 2:  # the best accuracy at each cost: a staircase
        figure.add_trace(
            go.Scatter(
                x=[getattr(r, cost) for r in front],
                y=[r.mean for r in front],
                mode="lines",
                line={"shape": "hv", "dash": "dot", "color": "#555"},
                name="Pareto front",
                hoverinfo="skip",
            )
        )
    dense = [r for r in points if r.method == "dense"]
    if dense:
        best = max(dense, key=lambda r: r.score)
        figure.add_hline(
            y=best.mean,
            line_dash="dash",
            line_color="#999",
            annotation_text=f"dense baseline {best.mean:.{QUALITIES[best.metric].digits}f}",
            annotation_position="bottom right",
        )
    values = [r.mean for r in points]
    estimated = " (estimated)" if cost == "latency_ms" and points[0].latency_estimated else ""
    figure.update_layout(
        title=title + estimated,
        height=420,
        width=700,
        legend_title_text="method",
        xaxis={"title": COST_TITLES[cost], "type": "log"},
        yaxis=_quality_axis(points[0].metric, values),
    )
    return figure


def html_report(
    rows: list[Row],
    path: Path,
    title: str = "sparsebench leaderboard",
    slide_rows: int | None = None,
) -> Path:
    """Write the report to ``path`` (and plotly's JavaScript beside it) and return it.
    ``slide_rows``: a slide's layout, per key the plots first and then the best rows only."""
    by_key: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_key[row.benchmark_key].append(row)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>"
        "<script src='plotly.min.js'></script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>Markers: &#9679; unstructured, &#9670; N:M, &#9632; block, &#9650; channel, "
        "&#10006; dense; &#9733; in the table: on the Pareto front. Rows are ranked by test "
        "accuracy (highest first) or, for language models, test perplexity (lowest first).</p>",
    ]
    for key, members in sorted(by_key.items()):
        ranked = sorted(members, key=lambda r: r.rank)
        shown = ranked if slide_rows is None else ranked[:slide_rows]
        table = html_table(shown)
        if len(shown) < len(ranked):
            table.append(f"<p>+{len(ranked) - len(shown)} more rows in the full report</p>")
        plots = ["<div style='display:flex;flex-wrap:wrap'>"]  # the plots side by side
        quality = QUALITIES[members[0].metric].name
        for cost, label in (("flops_sparse", "FLOPs"), ("latency_ms", "latency")):
            figure = _figure(members, cost, f"{key}: {quality} vs {label}")
            if figure is not None:
                plot = figure.to_html(full_html=False, include_plotlyjs=False)
                plots.append(f"<div style='flex:0 0 720px'>{plot}</div>")
        plots.append("</div>")
        parts.append(f"<h2>{html.escape(key)}</h2>")
        parts += [*plots, *table] if slide_rows is not None else [*table, *plots]
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    plotly_js(path.parent)
    return path


def plotly_js(folder: Path) -> Path:
    """plotly.min.js beside the report (from the installed plotly package: offline)."""
    from plotly.offline import get_plotlyjs

    target = folder / "plotly.min.js"
    if not target.is_file():
        target.write_text(get_plotlyjs())
    return target


# Headless Chromium renders the report exactly as a browser would (plotly draws with JavaScript,
# so only a real browser engine shows whether the plots appear); no Python library renders it.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HEADLESS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
    "--hide-scrollbars",
    "--mute-audio",
    "--virtual-time-budget=15000",
)


def find_browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    raise FileNotFoundError(
        f"rendering the report needs Chromium or Chrome on PATH ({', '.join(BROWSERS)}); "
        "none was found (Debian: apt-get install chromium)."
    )


def _chromium(page: Path | str, *flags: str, timeout: float) -> str:
    """Run headless Chromium on ``page`` (a file, or an http(s) URL); its stdout."""
    url = page if str(page).startswith(("http://", "https://")) else Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [find_browser(), *HEADLESS, f"--user-data-dir={profile}", *flags, url],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed on {page}: {proc.stderr[-2000:]}")
    return proc.stdout


def rendered_dom(
    page: Path | str, timeout: float = 120, width: int = 1400, height: int = 1000
) -> str:
    """The page's DOM after its scripts ran (plotly's SVG included), in a window of this size
    (pages that draw only what is visible, like MLflow's runs table, need it)."""
    return _chromium(page, "--dump-dom", f"--window-size={width},{height}", timeout=timeout)


SLIDE = (1600, 900)
SLIDE_ROWS = 8  # under the plots, the rows that fit a slide


def slides(rows: list[Row], png_path: Path, timeout: float = 120) -> list[Path]:
    """One slide-sized PNG (1600x900) per benchmark key: ``png_path`` for a single key, else
    ``NAME-1.png``, ``NAME-2.png``, ... in key order."""
    keys = sorted({row.benchmark_key for row in rows})
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, key in enumerate(keys, start=1):
            page = html_report(
                [r for r in rows if r.benchmark_key == key],
                Path(tmp) / f"{i}.html",
                slide_rows=SLIDE_ROWS,
            )
            target = (
                png_path
                if len(keys) == 1
                else png_path.with_name(f"{png_path.stem}-{i}{png_path.suffix}")
            )
            out.append(screenshot(page, target, *SLIDE, timeout=timeout))
    return out


def screenshot(
    html_path: Path | str,
    png_path: Path,
    width: int = 1400,
    height: int | None = None,
    timeout: float = 120,
) -> Path:
    """A PNG of the rendered report (or of an http(s) URL, at ``height``); the default height
    fits the whole report."""
    if height is None:  # the whole page: per board a heading, its table rows, two plots
        page = Path(html_path).read_text()
        boards = max(1, page.count("<table class='leaderboard'>"))
        height = 150 + boards * (100 + 2 * 470) + 32 * page.count("<tr>")
    _chromium(
        html_path,
        f"--screenshot={Path(png_path).resolve()}",
        f"--window-size={width},{height}",
        timeout=timeout,
    )
    return Path(png_path)
