"""End to end through the command line: Hydra, multirun, MLflow, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sparsebench.record.contract import CONTRACT_METRICS, CONTRACT_TAGS
from tests.fixtures import REPO, free_port, run_cli, wait_until_healthy

pytestmark = pytest.mark.slow

FAST = ["debug=fast", "hardware.threads=1"]


def _results_files(cwd: Path) -> list[Path]:
    return sorted(cwd.glob("outputs/**/results.json"))


@pytest.mark.parametrize(
    ("args", "target"),
    [
        (
            [
                "+method=rigl",
                "method.sparsity=0.9",
                "model=mlp",
                "dataset=mnist1d",
                "method.update_interval=2",
            ],
            0.9,
        ),
        (["+method=nm", "method.pattern=2:4", "model=resnet20", "dataset=synthetic"], 0.5),
    ],
)
def test_sparse_methods_end_to_end(tmp_path: Path, args: list[str], target: float) -> None:
    proc = run_cli([*FAST, *args, "print_summary=true"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout and "FLOPs/sample dense" in proc.stdout
    (results,) = _results_files(tmp_path)
    data = json.loads(results.read_text())
    metrics = data["metrics"]
    assert data["status"] == "ok" and set(CONTRACT_METRICS) <= set(metrics)
    assert metrics["sparsity/target"] == target
    assert metrics["sparsity/actual"] == pytest.approx(target, abs=1e-4)
    assert metrics["flops/sparse"] < metrics["flops/dense"]
    assert data["tags"]["method"] == args[0].removeprefix("+method=")
    (model,) = [a.removeprefix("model=") for a in args if a.startswith("model=")]
    assert data["tags"]["model"] == model


def test_cpu_sparse_target_end_to_end(tmp_path: Path) -> None:
    # The acceptance command with a short budget; timing is only printed, never asserted.
    args = [
        "+method=random",
        "method.sparsity=0.9",
        "model=mlp",
        "dataset=mnist1d",
        "model.hidden_dims=[1024,1024]",
        "hardware=cpu_sparse",
        "hardware.min_run_time=0.1",
    ]
    proc = run_cli([*FAST, *args], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = _results_files(tmp_path)
    data = json.loads(results.read_text())
    assert data["kernels"] == {
        "features.4": data["kernels"]["features.4"]
    }  # the one prunable layer
    assert data["kernels"]["features.4"] in {
        "dense",
        "csr",
        "bsr4x4",
        "bsr16x16",
        "direct",
        "direct4x1",
    }
    metrics = data["metrics"]
    assert data["tags"]["latency/noisy"] in {"true", "false"}  # stated, whatever the machine
    assert (
        metrics["latency/p50_low_ms"] <= metrics["latency/p50_ms"] <= metrics["latency/p50_high_ms"]
    )
    assert metrics["kernels/bn_folded"] == 0  # an MLP: BatchNorm1d after Linear stays
    assert metrics["speedup/measured"] == pytest.approx(
        metrics["latency/dense_p50_ms"] / metrics["latency/p50_ms"]
    )
    assert metrics["size/sparse_bytes"] < 0.5 * metrics["size/dense_bytes"]  # CSR storage
    assert data["tags"]["latency/estimated"] == "false"


def test_multirun_seeds_share_benchmark_key(tmp_path: Path) -> None:
    # The acceptance command, python -m sparsebench -m seed=0,1 trainer.max_epochs=1, on 4 batches
    proc = run_cli(
        [
            "-m",
            "seed=0,1",
            "trainer.max_epochs=1",
            "hardware.min_run_time=0.1",
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    every = client.search_runs([client.get_experiment_by_name("sparsebench").experiment_id])
    runs = [r for r in every if "sparsebench.sweep" not in r.data.tags]  # the jobs, not the parent
    assert len(every) == 3 and len(runs) == 2
    assert {r.data.tags["seed"] for r in runs} == {"0", "1"}
    assert len({r.data.tags["benchmark_key"] for r in runs}) == 1
    assert len({r.data.tags["run_hash"] for r in runs}) == 1  # replicates share the config hash
    for r in runs:
        assert set(CONTRACT_METRICS) <= set(r.data.metrics), set(CONTRACT_METRICS) - set(
            r.data.metrics
        )
        assert set(CONTRACT_TAGS) <= set(r.data.tags)
        assert r.info.status == "FINISHED"
        assert "val/acc" in {m.key for m in client.get_metric_history(r.info.run_id, "val/acc")}
    assert len(_results_files(tmp_path)) == 2
    # Nested under one parent run for the sweep.
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
    assert len(parents) == 1 and None not in parents
    parent = client.get_run(parents.pop())
    assert parent.info.status == "FINISHED" and "sparsebench.sweep" in parent.data.tags
    # The parent holds the sweep's overrides and, per run_hash, the jobs' aggregates.
    assert parent.data.params["seed"] == "0,1" and parent.info.run_name.startswith(
        "sweep seed=0,1 "
    )
    run_hash = runs[0].data.tags["run_hash"]
    accs = [r.data.metrics["test/acc"] for r in runs]
    assert parent.data.metrics[f"{run_hash}/test/acc/n"] == 2
    assert parent.data.metrics[f"{run_hash}/test/acc/mean"] == pytest.approx(sum(accs) / 2)


def test_the_natural_method_grid_runs_and_shows_in_the_mlflow_ui(tmp_path: Path) -> None:
    # Hydra composes a multirun's single values before a job chooses the method group.
    proc = run_cli(
        [
            "-m",
            "+method=random,magnitude",
            "method.sparsity=0.8",
            "model=mlp",
            "dataset=mnist1d",
            "debug=fast",
            "hardware.threads=1",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in _results_files(tmp_path)]
    assert sorted(r["tags"]["method"] for r in runs) == ["magnitude", "random"]
    assert all(r["status"] == "ok" and r["metrics"]["sparsity/target"] == 0.8 for r in runs)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    (parent,) = client.search_runs(["1"], "tags.`sparsebench.sweep` != ''")
    # Named and parametrized as typed (the multirun's internal choice(0.8) is not shown).
    assert "method.sparsity=0.8 " in parent.info.run_name and "choice" not in parent.info.run_name
    assert parent.data.params["method.sparsity"] == "0.8"

    # The MLflow UI (headless Chromium on `mlflow ui`): the experiment's runs table in
    # sparsebench's view shows the runs by name, with the contract's metrics as columns.
    from sparsebench.leaderboard.html import find_browser, rendered_dom, screenshot
    from sparsebench.record.ui import ui_page

    try:
        find_browser()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    port = free_port()
    ui = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_healthy(base, ui, timeout=120)
        url = f"{base}/{ui_page('1')}"
        dom = rendered_dom(url, width=1920, height=1000)
        for data in runs:  # each job's row, by its run name
            assert client.get_run(data["mlflow"]["run_id"]).info.run_name in dom
        for metric in ("test/acc", "sparsity/actual", "flops/sparse", "latency/p50_ms"):
            assert f'col-id="metrics.`{metric}`"' in dom  # a column of the table
        assert "Model training" in dom and "sweep method=random,magnitude" in dom
        png = screenshot(url, tmp_path / "mlflow-ui.png", width=1920, height=1000)
        assert png.stat().st_size > 20_000
    finally:
        ui.terminate()
        ui.wait(timeout=30)


# The messages themselves are tested in-process (tests/config/test_config.py); here one of each path
# through the CLI: a group name checked before Hydra, a value and a key checked by the runner.
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["model=resnet1"],
            "error: unknown model 'resnet1'; available: dass, efficientnet_b0, hf_causal_lm, mlp,",
        ),
        (["runner=bogus"], "error: runner must be one of train, prune, got 'bogus'."),
        (
            ["+trainer.max_epoch=3"],
            "error: unknown key 'trainer.max_epoch'; trainer takes: max_epochs,",
        ),
    ],
)
def test_bad_input_is_one_sentence_before_training(
    tmp_path: Path, args: list[str], message: str
) -> None:
    proc = run_cli(args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert _results_files(tmp_path) == [] and not list(tmp_path.glob("outputs/**/*.ckpt"))


def test_unknown_key_without_plus_names_the_key(tmp_path: Path) -> None:
    # Hydra's own composition errors are one sentence too (checked before Hydra runs).
    proc = run_cli(["trainer.max_epoch=3"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: unknown key 'trainer.max_epoch'; trainer takes: max_epochs,")
    assert _results_files(tmp_path) == []


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "sparsebench"
    assert script.is_file()
    proc = subprocess.run(
        [str(script), "upload", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "RUN_DIR" in proc.stdout.upper().replace("RUN_DIRS", "RUN_DIR")


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_ddp_on_two_cpu_processes_masks_agree_and_one_run_is_recorded(
    tmp_path: Path, method: str
) -> None:
    # Each rank dumps its masks at the end; SET's random growth must agree too.
    dump = f"[{{_target_:tests.fixtures.DumpMasks,dirpath:'{tmp_path / 'masks'}'}}]"
    proc = run_cli(
        [
            *FAST,
            "trainer=ddp",
            "model=mlp",
            "dataset=digits",
            f"+method={method}",
            "method.update_interval=1",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=4",
            f"trainer.callbacks={dump}",
        ],
        cwd=tmp_path,
        timeout=300,
        env={"PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr  # really two processes
    import torch

    dumps = [torch.load(p) for p in sorted((tmp_path / "masks").glob("rank*.pt"))]
    assert len(dumps) == 2
    assert dumps[0]["updates"] > 0  # masks really changed during training
    assert dumps[0]["masks"].keys() == dumps[1]["masks"].keys()
    for name, mask in dumps[0]["masks"].items():
        assert torch.equal(mask, dumps[1]["masks"][name]), name
    (results,) = _results_files(tmp_path)  # rank zero writes; rank one does not
    data = json.loads(results.read_text())
    assert data["status"] == "ok" and data["config"]["trainer"]["strategy"] == "ddp"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sparsebench").experiment_id])
    assert len(runs) == 1 and "test/acc" in runs[0].data.metrics
