"""What a run records about itself, in-process: pattern tags, refused tags and runners, the
history's epochs and MLflow steps, and Sparse-IFT's training FLOPs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["nm", "sr_ste", "pgf"])
def test_n_m_methods_are_tagged_with_their_pattern(make_cfg, name: str) -> None:
    from sparsebench.training.parts import build_method

    assert build_method(make_cfg(f"+method={name}")).pattern_tag == "2:4"
    assert build_method(make_cfg(f"+method={name}", "method.pattern=1:8")).pattern_tag == "1:8"


def test_a_2_4_run_is_tagged_2_4_everywhere(make_cfg, tmp_path: Path) -> None:
    from sparsebench.leaderboard.read import read_runs
    from sparsebench.runners.train import run

    run(make_cfg("model=mlp", "dataset=digits", "+method=sr_ste"))
    data = json.loads((tmp_path / "run/results.json").read_text())
    assert data["tags"]["pattern"] == "2:4"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert [r["tags"]["pattern"] for r in read_runs(uri, None, {"pattern": "2:4"})] == ["2:4"]
    assert read_runs(uri, None, {"pattern": "unstructured"}) == []


def test_methods_of_the_other_runner_and_contract_tags_are_refused(make_cfg, tmp_path) -> None:
    from sparsebench.errors import ConfigError
    from sparsebench.runners import prune, train

    with pytest.raises(
        ConfigError, match="method 'wanda' prunes a trained model: run it with runner=prune"
    ):
        train.run(make_cfg("+method=wanda"))
    with pytest.raises(ConfigError, match="runner 'prune' needs a post-training method"):
        prune.run(make_cfg("runner=prune", "+method=rigl"))
    for tag in ("method", "run_hash", "benchmark_key", "pattern"):
        with pytest.raises(ConfigError, match=f"tags.{tag} is set by sparsebench"):
            train.run(make_cfg(f"+tags.{tag}=x"))
    assert not (tmp_path / "run").exists()  # refused before anything was recorded


def test_history_rows_hold_their_own_epoch_and_share_mlflow_s_step_axis(make_cfg, tmp_path) -> None:
    import lightning as L

    from sparsebench.record.upload import main as upload
    from sparsebench.runners.train import run

    class Losses(L.Callback):  # the ground truth: every batch's loss and size, per epoch
        def __init__(self) -> None:
            self.sums: dict[int, list[float]] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            total = self.sums.setdefault(trainer.current_epoch, [0.0, 0.0])
            total[0] += float(outputs["loss"]) * len(batch[1])
            total[1] += len(batch[1])

    losses = Losses()
    run(make_cfg("model=mlp", "dataset=digits", "trainer.max_epochs=3"), callbacks=[losses])
    data = json.loads((tmp_path / "run/results.json").read_text())
    assert [row["epoch"] for row in data["history"]] == [0, 1, 2]  # every epoch, the last too
    for row in data["history"]:
        total, count = losses.sums[row["epoch"]]
        assert row["train/loss"] == pytest.approx(total / count, rel=1e-5)  # its own epoch's
        assert {"train/acc", "val/acc", "val/loss"} <= row.keys()
    live = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    other = f"sqlite:///{tmp_path}/uploaded.db"
    assert upload([str(tmp_path / "run"), "--tracking-uri", other]) == 0
    uploaded = MlflowClient(tracking_uri=other)
    (copy,) = uploaded.search_runs([uploaded.get_experiment_by_name("sparsebench").experiment_id])

    def curve(client, run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted({(m.step, m.value) for m in client.get_metric_history(run_id, key)})

    for key in ("train/loss", "val/acc"):  # the same points live and uploaded
        assert curve(live, data["mlflow"]["run_id"], key) == curve(uploaded, copy.info.run_id, key)
    # The contract's val/acc is the last epoch's point, not a new one at step 0.
    assert curve(live, data["mlflow"]["run_id"], "val/acc") == [
        (row["epoch"], pytest.approx(row["val/acc"])) for row in data["history"]
    ]


def test_sparse_ift_training_flops_use_the_widened_network(make_cfg, tmp_path: Path) -> None:
    from sparsebench.metrics.flops import flops_per_sample
    from sparsebench.runners.train import run
    from sparsebench.training.parts import (
        build_datamodule,
        build_method,
        build_run_model,
        build_transform,
    )

    cfg = make_cfg("model=mlp", "dataset=digits", "+method=sparse_ift", "method.update_interval=2")
    metrics = run(cfg).metrics
    method = build_method(cfg)
    datamodule = build_datamodule(cfg, check=True)
    example = datamodule.example_input(1)
    wide = build_run_model(cfg, datamodule, method, build_transform(cfg, method))
    f_wide = flops_per_sample(wide, example)["flops/dense"]  # RigL's dense gradient is on this
    f_s, samples, dt = metrics["flops/sparse"], metrics["train/samples"], 2
    # Sparse-IFT's RigL accounting (docs/methods.md): 3 f_s per step, a dense gradient every dT.
    assert metrics["flops/train"] == pytest.approx(
        samples * (3 * f_s * dt + 2 * f_s + f_wide) / (dt + 1)
    )
    assert f_wide > 1.1 * metrics["flops/dense"]  # flops/dense stays the original's (iso-FLOP)
