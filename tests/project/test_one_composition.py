"""One way to compose: the same overrides give the same config and the same run hash through
the command line, the search worker and the reproduction suite (they all call
``sparsebench.config.compose.compose``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsebench.record.identity import run_hash
from tests.fixtures import run_cli, search_in_process, write_sweep

pytestmark = pytest.mark.slow

FIXED = [
    "model=mlp",
    "dataset=digits",
    "+method=rigl",
    "seed=3",
    "logger=none",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "hardware.threads=1",
    "hardware.min_run_time=0.02",
    "hardware.warmup=1",
    "print_summary=false",
    "trainer.enable_progress_bar=false",
]
SPARSITY = "method.sparsity=0.8"


def _record(folder: Path) -> dict:
    (path,) = folder.glob("**/results.json")
    data = json.loads(path.read_text())
    assert data["status"] == "ok", data.get("error")
    return data


def _comparable(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    del config["paths"]["output_dir"]  # where each path puts its run, by design
    return config


def test_command_line_worker_and_suite_compose_one_config(tmp_path: Path, monkeypatch) -> None:
    from sparsebench.reproduce.claims import Job
    from sparsebench.reproduce.suite import compose, run_job
    from sparsebench.search.worker import Worker

    cli = tmp_path / "cli"
    cli.mkdir()
    proc = run_cli([*FIXED, SPARSITY], cwd=cli)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_cli = _record(cli)

    study = tmp_path / "study"
    study.mkdir()
    path = write_sweep(
        study,
        overrides=FIXED,
        n_trials=1,
        space={"method.sparsity": {"type": "categorical", "choices": [0.8]}},
    )
    worker = Worker(*search_in_process([f"sweep={path}"], study, monkeypatch))
    worker.run()
    by_worker = _record(worker.output_dir / "trials")
    assert dict(worker.results[0].metrics) == by_worker["metrics"]  # the value is the record

    job = Job("claim", "arm", 3, (*FIXED, SPARSITY), tmp_path / "suite")
    cfg = compose(job, [])
    outcome = run_job(job, cfg)
    by_suite = _record(job.folder)
    assert outcome.status == "ok" and outcome.metrics == by_suite["metrics"]

    assert _comparable(by_worker["config"]) == _comparable(by_cli["config"])
    assert _comparable(by_suite["config"]) == _comparable(by_cli["config"])
    hashes = {r["tags"]["run_hash"] for r in (by_cli, by_worker, by_suite)}
    assert hashes == {run_hash(cfg)}
    # the same seed and options train the same network: one configuration, one result
    assert by_worker["metrics"]["test/acc"] == by_cli["metrics"]["test/acc"]
    assert by_suite["metrics"]["test/acc"] == by_cli["metrics"]["test/acc"]
