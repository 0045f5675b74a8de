"""The random-search baseline (Farahani 2024): node masks, and the comparison table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from sparsebench.errors import ConfigError
from sparsebench.models import build_model
from sparsebench.sparsity.masks import MASK
from sparsebench.training.parts import build_method
from tests.fixtures import compose_config, search_in_process


def _node(*overrides: str):
    cfg = compose_config(["model=mlp", "dataset=mnist1d", "+method=node", *overrides])
    model = build_model(cfg.model)
    method = build_method(cfg)
    method.attach(model)
    method.init_masks()
    return model, method


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_node_masks_remove_whole_units_at_the_target_sparsity(sparsity: float) -> None:
    model, method = _node(f"method.sparsity={sparsity}", "model.hidden_dims=[128,96]")
    layers = list(method.masks)
    masks = [getattr(m, MASK) for _, m in layers]
    for mask in masks:  # every mask is an outer product of kept rows and kept columns
        rows, cols = mask.any(1), mask.any(0)
        assert torch.equal(mask, rows[:, None] & cols[None, :])
    for before, after in zip(masks, masks[1:], strict=False):  # a unit is kept in and out, or not
        assert torch.equal(before.any(1), after.any(0))
    assert masks[0].any(0).all() and masks[-1].any(1).all()  # inputs and classes all kept
    kept = sum(int(m.sum()) for m in masks)
    total = sum(m.numel() for m in masks)
    one_unit = max(m.shape[0] + m.shape[1] for m in masks)  # weights of the largest unit
    assert abs((1 - kept / total) - sparsity) <= one_unit / total


def test_node_seed_draws_other_units_and_spread_zero_keeps_equal_fractions() -> None:
    _, a = _node("method.node_seed=0", "model.hidden_dims=[128,128]")
    _, b = _node("method.node_seed=1", "model.hidden_dims=[128,128]")
    hidden_a, hidden_b = (getattr(list(m.masks)[1][1], MASK) for m in (a, b))
    assert not torch.equal(hidden_a, hidden_b)
    _, same = _node("method.layer_spread=0", "model.hidden_dims=[128,128]", "method.sparsity=0.8")
    first, second = (int(getattr(m, MASK).any(1).sum()) for _, m in list(same.masks)[:2])
    assert first == second


def test_node_masks_refuse_models_that_are_not_a_chain_of_linear_layers() -> None:
    cfg = compose_config(["model=resnet20", "dataset=digits", "+method=node"])
    method = build_method(cfg)
    method.attach(build_model(cfg.model))
    with pytest.raises(ConfigError, match="method 'node' needs a chain of Linear layers"):
        method.init_masks()


@pytest.mark.slow
def test_baseline_sweep_produces_its_table(tmp_path: Path, monkeypatch) -> None:
    study = {
        "overrides": ["model=mlp", "dataset=digits", "debug=fast", "model.hidden_dims=[64,64]"],
        "space": {
            "method.node_seed": {"type": "int", "low": 0, "high": 1000000},
            "method.layer_spread": {"type": "float", "low": 0.0, "high": 0.9},
        },
        "sampler": {"name": "random", "seed": 0},
        "n_trials": 2,
        "baseline": {"sparsities": [0.8], "seeds": [0, 1]},
    }
    (tmp_path / "bl.yaml").write_text(yaml.safe_dump(study))
    from sparsebench.search.baseline import Baseline
    from sparsebench.search.spec import load_spec

    cfg, output_dir = search_in_process([f"sweep={tmp_path / 'bl.yaml'}"], tmp_path, monkeypatch)
    Baseline(cfg, output_dir, load_spec(cfg.sweep)).run()
    (table,) = tmp_path.glob("outputs/search/bl/*/*/baseline.csv")
    rows = list(csv.DictReader(table.open()))
    assert [(r["arm"], r["sparsity"], r["n"]) for r in rows] == [
        ("dense parent", "0.0", "2"),
        ("random search (node)", "0.8", "2"),
        ("random (weights)", "0.8", "2"),
    ]
    for row in rows:
        assert 0 < float(row["test_acc_mean"]) <= 1 and float(row["test_acc_std"]) >= 0
    for row in rows[1:]:  # equal sparsity over the same weights in both sparse arms
        assert float(row["sparsity_actual"]) == pytest.approx(0.8, abs=0.01)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sparsebench").experiment_id])
    (parent,) = [r for r in runs if "sparsebench.baseline" in r.data.tags]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == 2 + 2 * 2 + 2  # dense, search trials, random arm
    assert "baseline.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
