"""The training runner in-process: the results contract, MLflow, and nothing lost on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from sparsebench.hardware.cpu import CPUTarget
from sparsebench.record.contract import CONTRACT_METRICS, CONTRACT_TAGS
from sparsebench.record.upload import main as upload
from sparsebench.runners.train import run
from tests.fixtures import free_port


def _results(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "results.json").read_text())


def _runs(tmp_path: Path, uri: str | None = None):
    client = MlflowClient(tracking_uri=uri or f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("sparsebench")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_mlp_on_mnist1d_fills_the_contract(make_cfg, tmp_path: Path) -> None:
    metrics = run(
        make_cfg(
            "model=mlp",
            "dataset=mnist1d",
            "dataset.num_samples=600",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=null",
        )
    ).metrics
    data = _results(tmp_path)
    assert data["status"] == "ok"
    assert set(CONTRACT_METRICS) <= set(data["metrics"]) and set(CONTRACT_TAGS) <= set(data["tags"])
    assert metrics == data["metrics"]
    assert 0 <= metrics["test/acc"] <= 1 and metrics["sparsity/actual"] == 0.0
    assert metrics["flops/sparse"] == metrics["flops/dense"] > 0
    # 480 training samples (600 - 20% test... minus val) x 2 epochs, 3 FLOPs-per-FLOP of forward.
    assert metrics["flops/train"] == 3 * metrics["flops/dense"] * 2 * 432
    assert [row["epoch"] for row in data["history"]] == [0, 1]
    (mlflow_run,) = _runs(tmp_path)
    assert mlflow_run.info.status == "FINISHED"
    assert set(CONTRACT_METRICS) <= set(mlflow_run.data.metrics)
    assert mlflow_run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert mlflow_run.data.tags["run_hash"] == data["tags"]["run_hash"]
    assert mlflow_run.data.params["trainer.optimizer.lr"] == "0.05"
    assert data["mlflow"]["run_id"] == mlflow_run.info.run_id
    # Readable, unique names (the hash tells 1 and 2 epochs apart); the experiment opens in the
    # MLflow UI's model-training view; the device is recorded.
    hash6 = data["tags"]["run_hash"][:6]
    assert mlflow_run.info.run_name == f"dense-mlp-mnist1d-s0-{hash6}"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment(mlflow_run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert data["tags"]["hw/train_device"] == "cpu"
    (dataset,) = client.get_run(mlflow_run.info.run_id).inputs.dataset_inputs  # an MLflow input
    assert dataset.dataset.name == "mnist1d" and '"num_samples": 600' in dataset.dataset.source


def test_system_metrics_and_the_model_are_options(make_cfg, tmp_path: Path) -> None:
    import mlflow
    import mlflow.pytorch

    from sparsebench.training.parts import build_datamodule

    cfg = make_cfg(
        "model=mlp",
        "dataset=digits",
        "+method=magnitude",
        "method.sparsity=0.8",
        "logger.log_system_metrics=true",
        "logger.log_model=true",
    )
    metrics = run(cfg).metrics
    (mlflow_run,) = _runs(tmp_path)
    # A run shorter than the monitor's interval still gets its sample (taken at the end).
    assert any(key.startswith("system/cpu_utilization") for key in mlflow_run.data.metrics)
    # The logged model (pt2: loads without unpickling) is the tested one: same test accuracy.
    data = _results(tmp_path)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(data["mlflow"]["tracking_uri"])
    try:
        model = mlflow.pytorch.load_model(f"models:/{data['mlflow']['model_id']}")
    finally:
        mlflow.set_tracking_uri(previous)
    datamodule = build_datamodule(cfg)
    datamodule.setup("test")
    correct = total = 0
    with torch.no_grad():
        for x, y in datamodule.test_dataloader():
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    assert correct / total == pytest.approx(metrics["test/acc"], abs=1e-6)
    logged = MlflowClient(tracking_uri=data["mlflow"]["tracking_uri"]).get_logged_model(
        data["mlflow"]["model_id"]
    )
    assert logged.source_run_id == mlflow_run.info.run_id


def test_resnet20_on_synthetic(make_cfg, tmp_path: Path) -> None:
    metrics = run(make_cfg("model=resnet20", "dataset=synthetic", "logger=none")).metrics
    assert metrics["params/total"] == pytest.approx(0.275e6, rel=0.02)
    assert _results(tmp_path)["status"] == "ok"
    assert _runs(tmp_path) == []  # logger=none


def test_failure_mid_run_keeps_results_and_checkpoint(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    def broken(self, model, example, layers=None, pattern=None):
        raise RuntimeError("latency probe exploded")

    monkeypatch.setattr(CPUTarget, "benchmark", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        run(make_cfg("model=mlp", "dataset=digits", "trainer.enable_checkpointing=true"))
    data = _results(tmp_path)
    assert data["status"] == "failed" and "latency probe exploded" in data["error"]
    assert "test/acc" in data["metrics"] and "flops/dense" in data["metrics"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    (mlflow_run,) = _runs(tmp_path)
    assert mlflow_run.info.status == "FAILED"
    assert "test/acc" in mlflow_run.data.metrics


def test_unreachable_server_then_upload_once(make_cfg, tmp_path: Path, capsys) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = make_cfg(
        "model=mlp", "dataset=digits", f"logger.tracking_uri={dead}", "print_summary=true"
    )
    metrics = run(cfg).metrics
    out = capsys.readouterr().out
    assert f"tracking server {dead} cannot be reached" in out
    assert f"sparsebench upload {tmp_path / 'run'}" in out
    data = _results(tmp_path)
    assert data["status"] == "ok" and data["mlflow"] == {}

    store = f"sqlite:///{tmp_path}/later.db"
    for _ in range(2):  # the second upload finds the run and adds nothing
        assert upload([str(tmp_path / "run"), "--tracking-uri", store]) == 0
    (uploaded,) = _runs(tmp_path, store)
    assert uploaded.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert uploaded.data.tags["run_hash"] == data["tags"]["run_hash"]
    assert "already complete" in capsys.readouterr().out
