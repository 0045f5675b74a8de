"""Leaderboard aggregation and Pareto fronts on hand-made runs."""

from __future__ import annotations

import pytest

from sparsebench.leaderboard.rows import admit, aggregate, describe_left_out
from sparsebench.record.contract import CONTRACT_METRICS


def run(
    key="digits|mlp|cpu|e1",
    run_hash="h",
    method="m",
    seed="0",
    acc=0.9,
    flops=100.0,
    latency=1.0,
    estimated="false",
    train=1e9,
    pattern="unstructured",
):
    """A complete ok run: every contract metric (1.0 unless given)."""
    metrics = {
        **dict.fromkeys(CONTRACT_METRICS, 1.0),
        "test/acc": acc,
        "flops/sparse": flops,
        "flops/dense": 200.0,
        "flops/train": train,
    }
    metrics.pop("latency/p50_ms")
    if latency is not None:
        metrics["latency/p50_ms"] = latency
    tags = {
        "benchmark_key": key,
        "run_hash": run_hash,
        "method": method,
        "seed": seed,
        "latency/estimated": estimated,
        "pattern": pattern,
    }
    return {"metrics": metrics, "tags": tags}


def test_replicates_are_aggregated_with_mean_std_n() -> None:
    rows = aggregate([run(seed="0", acc=0.8), run(seed="1", acc=0.9), run(run_hash="g", acc=0.5)])
    top = rows[0]
    assert (top.n, top.seeds, top.rank) == (2, ["0", "1"], 1)
    assert top.mean == pytest.approx(0.85) and top.std == pytest.approx(0.0707107, rel=1e-5)
    single = rows[1]
    assert single.n == 1 and single.std == 0.0 and single.rank == 2


def test_flops_front_with_ties_and_dominance() -> None:
    rows = {
        r.run_hash: r
        for r in aggregate(
            [
                run(run_hash="a", acc=0.9, flops=100),
                run(run_hash="b", acc=0.9, flops=100),  # tie: both on it
                run(run_hash="c", acc=0.8, flops=50),  # cheaper: on it
                run(run_hash="d", acc=0.85, flops=120),  # dominated by a
                run(run_hash="e", acc=0.9, flops=110),  # same accuracy, more FLOPs: dominated
            ]
        )
    }
    assert {h for h, r in rows.items() if r.flops_front} == {"a", "b", "c"}


def test_the_front_sweep_agrees_with_the_definition() -> None:
    """The n log n sweep against the definition (no other row at least as accurate and at most
    as costly, one of them strictly), on random rows with many ties."""
    import random

    rng = random.Random(0)
    for trial in range(200):
        n = rng.randint(1, 12)
        rows = aggregate(
            [
                run(
                    run_hash=str(i),
                    acc=rng.choice((0.5, 0.6, 0.7, 0.8)),
                    flops=rng.choice((10.0, 20.0, 30.0)),
                )
                for i in range(n)
            ]
        )
        for a in rows:
            dominated = any(
                b.mean >= a.mean
                and b.flops_sparse <= a.flops_sparse
                and (b.mean > a.mean or b.flops_sparse < a.flops_sparse)
                for b in rows
                if b is not a
            )
            assert a.flops_front == (not dominated), (trial, a)


def test_missing_latency_and_never_mixed_estimates() -> None:
    rows = {
        r.run_hash: r
        for r in aggregate(
            [
                run(run_hash="a", acc=0.9, latency=None),  # no latency: not on the latency front
                run(run_hash="b", acc=0.8, latency=2.0),
                run(run_hash="c", acc=0.7, latency=3.0),  # dominated among measured
                run(
                    run_hash="d", acc=0.6, latency=0.1, estimated="true"
                ),  # estimated: its own front
            ]
        )
    }
    assert rows["a"].latency_ms is None and not rows["a"].latency_front
    assert rows["b"].latency_front and not rows["c"].latency_front
    assert rows["d"].latency_front  # would dominate b and c if mixed; it is not compared with them


def test_noisy_latency_marks_the_row() -> None:
    quiet, loud = run(seed="0"), run(seed="1")
    quiet["tags"]["latency/noisy"], loud["tags"]["latency/noisy"] = "false", "true"
    other = run(run_hash="g")
    other["tags"]["latency/noisy"] = "false"
    rows = {r.run_hash: r for r in aggregate([quiet, loud, other])}
    assert rows["h"].latency_noisy and not rows["g"].latency_noisy  # one noisy replicate marks it
    from sparsebench.leaderboard.render import markdown

    lines = [line for line in markdown(list(rows.values())).splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    column = cells[0].index("noisy")
    marks = {row[cells[0].index("run hash")]: row[column] for row in cells[2:]}
    assert marks == {"h": "*", "g": ""}


def test_keys_are_separate_and_budgets_flagged() -> None:
    rows = aggregate(
        [
            run(key="k1", run_hash="a", acc=0.9),
            run(key="k2", run_hash="b", acc=0.5),
            run(key="k1", run_hash="c", acc=0.95, train=3e9),
            run(key="k1", run_hash="d", acc=0.7),
        ]
    )
    k2 = [r for r in rows if r.benchmark_key == "k2"]
    assert len(k2) == 1 and k2[0].rank == 1 and k2[0].flops_front
    flagged = {r.run_hash for r in rows if r.budget_differs}
    assert flagged == {"c"}  # soups-like run: 3x the training FLOPs of its key


def test_failed_runs_are_skipped() -> None:
    broken = run()
    del broken["metrics"]["test/acc"]
    assert aggregate([broken]) == []


def test_only_complete_ok_runs_rank_and_the_rest_are_named() -> None:
    def with_state(name, status="FINISHED", tag="ok", drop=None):
        r = run()
        r.update(name=name, status=status)
        r["tags"]["sparsebench.status"] = tag
        if drop:
            del r["metrics"][drop]
        return r

    runs = [
        with_state("good"),
        with_state("live", "RUNNING", "running"),
        with_state("nan", "FAILED", "diverged"),
        with_state("term", "KILLED", "interrupted"),
        with_state("crash", "FAILED", "failed"),
        with_state("half", drop="latency/p50_ms"),
        with_state("old", "RUNNING", None),
        {"metrics": {}, "tags": {}, "status": "FINISHED"},
    ]
    del runs[6]["tags"]["sparsebench.status"]  # a run from before the tag: MLflow's status
    admitted, left = admit(runs)
    assert [r["name"] for r in admitted] == ["good"]  # the parent-like run is not counted
    assert left == {
        "running": ["live", "old"],
        "diverged": ["nan"],
        "interrupted": ["term"],
        "failed": ["crash"],
        "incomplete contract": ["half"],
    }
    assert describe_left_out(left) == (
        "left out 6 runs that are not complete ok runs: 2 running (live, old); 1 failed (crash); "
        "1 diverged (nan); 1 interrupted (term); 1 incomplete contract (half)."
    )


def test_cli_reads_mlflow_and_writes_csv_and_markdown(tmp_path, capsys) -> None:
    import csv

    from mlflow import MlflowClient

    from sparsebench.leaderboard.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sparsebench")
    for r in [
        run(run_hash="a", seed="0", acc=0.9),
        run(run_hash="a", seed="1", acc=0.8),
        run(run_hash="b", method="rigl", acc=0.7, flops=10),
        run(key="other", run_hash="c"),
    ]:
        mlflow_run = client.create_run(experiment, tags={**r["tags"], "dataset": "digits"})
        for name, value in r["metrics"].items():
            client.log_metric(mlflow_run.info.run_id, name, value)
        client.log_metric(
            mlflow_run.info.run_id, "sparsity/actual", 0.9 if r["tags"]["method"] == "rigl" else 0.0
        )
        client.set_terminated(mlflow_run.info.run_id)
    out_csv, out_md = tmp_path / "board.csv", tmp_path / "board.md"
    code = main(
        [
            "--tracking-uri",
            uri,
            "--benchmark-key",
            "digits|mlp|cpu|e1",
            "--csv",
            str(out_csv),
            "--markdown",
            str(out_md),
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["run_hash"], r["n"], r["rank"]) for r in rows] == [("a", "2", "1"), ("b", "1", "2")]
    assert all(r["flops_front"] == "True" for r in rows)  # a: most accurate, b: cheapest
    text = out_md.read_text()
    assert "### digits\\|mlp\\|cpu\\|e1" in text and "| 1   | m        | unstructured" in text
    assert main(["--tracking-uri", uri, "--pattern", "2:4"]) == 1  # N:M and unstructured apart
    printed = capsys.readouterr().out
    assert "leaderboard" in printed and "left out" not in printed  # every run is complete
    assert (
        main(
            [
                "--tracking-uri",
                uri,
                "--min-sparsity",
                "0.5",
                "--method",
                "rigl",
                "--csv",
                str(out_csv),
            ]
        )
        == 0
    )
    assert [r["run_hash"] for r in csv.DictReader(out_csv.open())] == ["b"]
    assert main(["--tracking-uri", uri, "--model", "nope"]) == 1
    # The report as artifacts of a leaderboard run (which itself never enters the table).
    assert main(["--tracking-uri", uri, "--log-to-mlflow"]) == 0
    (board,) = client.search_runs(
        [experiment], filter_string="tags.`sparsebench.leaderboard` = 'true'"
    )
    names = {a.path for a in client.list_artifacts(board.info.run_id)}
    assert names == {"leaderboard.csv", "leaderboard.html", "leaderboard.md", "plotly.min.js"}
    assert main(["--tracking-uri", uri, "--csv", str(out_csv)]) == 0
    assert len(list(csv.DictReader(out_csv.open()))) == 3


def test_html_report_colours_methods_marks_patterns_and_draws_the_front(tmp_path) -> None:
    import json
    import re

    from sparsebench.leaderboard.html import html_report

    rows = aggregate(
        [
            run(run_hash="a", method="dense", acc=0.95, flops=200, pattern="dense"),
            run(run_hash="b", method="rigl", acc=0.93, flops=40),
            run(run_hash="c", method="nm", acc=0.94, flops=100, pattern="2:4", latency=None),
            run(key="single", run_hash="d"),
        ]
    )
    page = html_report(rows, tmp_path / "board.html").read_text()
    assert page.count("<table class='leaderboard'>") == 2 and "<th>test acc</th>" in page
    figures = [
        json.loads(m) for m in re.findall(r'Plotly.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', page)
    ]
    assert len(figures) == 2  # FLOPs and latency for the first key; none for a single row
    flops = {t["name"]: t for t in figures[0]}
    assert {"dense", "rigl", "nm", "Pareto front"} <= set(flops)  # a legend entry per method
    assert flops["nm"]["marker"]["symbol"] == ["diamond"] and flops["rigl"]["marker"]["symbol"] == [
        "circle"
    ]
    assert flops["Pareto front"]["line"]["shape"] == "hv" and len(flops["Pareto front"]["x"]) >= 2
    assert len(figures[1]) >= 2 and "nm" not in {t["name"] for t in figures[1]}  # no latency
    assert "dense baseline 0.9500" in page
    # Small and offline: plotly's JavaScript once, beside the page.
    assert len(page) < 100_000 and "<script src='plotly.min.js'>" in page
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000


def test_report_renders_in_headless_chromium(tmp_path) -> None:
    # Debian's chromium (make test installs it): the page's scripts run, the plots are drawn.
    from PIL import Image

    from sparsebench.leaderboard.html import find_browser, html_report, rendered_dom, screenshot

    try:
        find_browser()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    rows = aggregate(
        [
            run(run_hash="a", method="dense", acc=0.95, flops=200, latency=2.0),
            run(run_hash="b", method="rigl", acc=0.93, flops=40, latency=1.2),
            run(run_hash="c", method="set", acc=0.90, flops=60, latency=1.5),
            run(run_hash="d", method="magnitude", acc=0.80, flops=20, latency=None),
        ]
    )
    page = html_report(rows, tmp_path / "board.html")
    dom = rendered_dom(page)
    assert dom.count('class="main-svg"') >= 4  # two plots drawn, each with its SVG layers
    assert dom.count('class="point"') >= 4 + 3  # 4 runs vs FLOPs, 3 with latency
    assert "dense baseline 0.9500" in dom and "accuracy vs latency" in dom
    for method in ("dense", "rigl", "set", "magnitude"):
        assert f"<td>{method}</td>" in dom
    png = screenshot(page, tmp_path / "board.png", height=1400)
    image = Image.open(png).convert("RGB")
    assert image.size == (1400, 1400)
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # text, table borders, markers: not a blank page
    plotly_blue = sum(n for n, rgb in colours if rgb == (99, 110, 250))  # plotly's first colour
    assert plotly_blue > 20
    # Slides: one 1600x900 image per benchmark key.
    from sparsebench.leaderboard.html import slides

    other = aggregate(
        [run(key="other", run_hash="e", acc=0.5, flops=5), run(key="other", run_hash="f")]
    )
    made = slides([*rows, *other], tmp_path / "slide.png")
    assert [p.name for p in made] == ["slide-1.png", "slide-2.png"]
    assert all(Image.open(p).size == (1600, 900) for p in made)


def test_budget_is_samples_seen_when_every_run_reports_it() -> None:
    def with_samples(samples, **kwargs):
        r = run(**kwargs)
        r["metrics"]["train/samples"] = samples
        return r

    rows = aggregate(
        [
            with_samples(1000, run_hash="dense", train=3e9),
            with_samples(1000, run_hash="rigl95", train=2e8),  # sparse: fewer FLOPs
            with_samples(1000, run_hash="rigl50", train=1.5e9),
            with_samples(3000, run_hash="soups", train=9e9),
        ]
    )
    assert {r.run_hash for r in rows if r.budget_differs} == {"soups"}


def _board() -> list:
    keys = ["mnist1d|mlp|cpu|epochs=1,batch=64", "mnist1d|mlp|cpu|epochs=10,batch=64"]
    runs = [
        run(key=k, run_hash=f"{i}{j}", seed="0", acc=0.5 + 0.1 * j, flops=100 - 10 * j)
        for i, k in enumerate(keys)
        for j in range(3)
    ]
    return aggregate(admit(runs)[0])


def test_markdown_rows_have_the_headers_cell_count() -> None:
    import re

    from sparsebench.leaderboard.render import markdown

    text = markdown(_board())
    cells = [
        len(re.split(r"(?<!\\)\|", line)) for line in text.splitlines() if line.startswith("|")
    ]
    assert len(cells) == 2 * (2 + 3) and len(set(cells)) == 1  # header, rule, 3 rows per key
    assert text.count("### mnist1d\\|mlp\\|cpu\\|epochs=") == 2  # each key one heading


@pytest.mark.parametrize("width", [80, 200])
def test_terminal_tables_fit_the_width_and_show_every_key_whole(width: int) -> None:
    from rich.console import Console

    from sparsebench.leaderboard.render import tables

    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    for table in tables(_board(), width):
        console.print(table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    assert (
        "mnist1d|mlp|cpu|epochs=1,batch=64" in text and "mnist1d|mlp|cpu|epochs=10,batch=64" in text
    )
    assert "test acc" in text and "FLOPs" in text and "unstructured" in text  # never folded
    assert ("run hash" in text) == (width == 200)  # a narrow terminal leaves it to the CSV
