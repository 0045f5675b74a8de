"""The Optuna search worker: studies from yaml, bad input before any trial, single- and
multi-objective studies, trial pruning, MLflow nesting. Many workers on PostgreSQL (with a
worker killed mid-trial) are in tests/search/test_search_cluster.py."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from sparsebench.config.compose import register
from sparsebench.errors import ConfigError
from sparsebench.search.spec import load_spec
from tests.fixtures import FAST, REPO, search, search_in_process, write_sweep

pytestmark = pytest.mark.slow
register()


@pytest.fixture
def search_here(tmp_path: Path, monkeypatch, capsys):
    """One worker in-process, as ``python -m sparsebench.search ARGS`` in tmp_path; returns
    what it printed."""
    from sparsebench.search.worker import Worker

    def run(args: list[str]) -> str:
        worker = Worker(*search_in_process(args, tmp_path, monkeypatch))
        worker.run()
        worker.report()
        return capsys.readouterr().out

    return run


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"space": {"method.sparsityy": {"type": "float", "low": 0.1, "high": 0.9}}},
            "error: sweep 'study': search-space key 'method.sparsityy' (value 0.1) is not a key of the trial config",
        ),
        (
            {"space": {"method.sparsity": {"type": "float", "low": 0.9, "high": 0.5}}},
            "error: sweep 'study': 'method.sparsity' has an empty range [0.9, 0.5]; low must be below high.",
        ),
        (
            {"space": {"method.distribution": {"type": "categorical", "choices": []}}},
            "error: sweep 'study': 'method.distribution' has an empty list of choices.",
        ),
        (
            {"space": {"method.sparsity": {"type": "float", "low": 0.5, "high": 1.5}}},
            "error: sweep 'study': method.sparsity=1.5: method.sparsity must be in [0.0, 1.0), got 1.5.",
        ),
        (
            {"objectives": [{"metric": "test/accuracy", "direction": "maximize"}]},
            "error: sweep 'study': objective 'test/accuracy' is not in the results contract; allowed: test/acc,",
        ),
        (
            {"storage": "postgresql://postgres@127.0.0.1:1/nothing"},
            "error: cannot reach the study storage postgresql+psycopg2://postgres@127.0.0.1:1/nothing (",
        ),
        (
            {"sampler": {"name": "grid"}},
            "error: sweep 'study': sampler 'grid' is unknown; give one of random, tpe, nsga2, nsga3, cmaes, gp, qmc,",
        ),
        (
            {"sampler": {"_target_": "optuna.pruners.MedianPruner"}},
            "error: sweep 'study': sampler _target_ 'optuna.pruners.MedianPruner' is not an Optuna sampler.",
        ),
    ],
)
def test_bad_input_is_one_sentence_before_any_trial(tmp_path: Path, fields, message) -> None:
    # What the worker checks before its first trial (the CLI path: the test below).
    from sparsebench.search.storage import open_storage
    from sparsebench.search.worker import check_space

    path = write_sweep(tmp_path, **fields)
    with pytest.raises(ConfigError) as info:
        spec = load_spec(str(path))
        check_space(spec, [])
        open_storage(spec.storage)
    assert f"error: {info.value}".startswith(message) and "\n" not in str(info.value)


def test_bad_input_through_the_cli_exits_2_before_any_trial(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, objectives=[{"metric": "test/accuracy", "direction": "maximize"}])
    proc = search([f"sweep={path}"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "objective 'test/accuracy'" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert (
        not list(tmp_path.glob("outputs/**/results.json")) and not (tmp_path / "optuna.db").exists()
    )


def test_unknown_sweep_name_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="unknown sweep 'nope'; available: .*tpe_rigl"):
        load_spec("nope")


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml")))
def test_shipped_sweeps_are_valid(name: str) -> None:
    from sparsebench.search.worker import check_space

    spec = load_spec(name)
    check_space(spec, [])  # every corner of every dimension composes and validates
    assert spec.n_trials >= 1 and spec.objectives


def test_study_runs_trials_as_nested_mlflow_runs(tmp_path: Path, search_here) -> None:
    stdout = search_here([f"sweep={write_sweep(tmp_path)}"])
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    sparsities = [t.params["method.sparsity"] for t in trials]
    assert len(set(sparsities)) == 3 and all(0.3 <= s <= 0.95 for s in sparsities)
    for trial in trials:  # each trial a full run: results contract in its own folder
        results = json.loads((Path(trial.user_attrs["run_dir"]) / "results.json").read_text())
        assert results["status"] == "ok"
        assert results["metrics"]["val/acc"] == pytest.approx(trial.value)
        assert results["metrics"]["sparsity/target"] == pytest.approx(
            trial.params["method.sparsity"]
        )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sparsebench").experiment_id])
    (parent,) = [r for r in runs if "sparsebench.study" in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["optuna.trial"] for r in children) == ["0", "1", "2"]
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in trials}
    best = study.best_trial
    assert parent.data.metrics["best/val/acc"] == pytest.approx(best.value)
    assert parent.data.tags["best_trial"] == str(best.number) and parent.info.status == "FINISHED"
    # The parent holds the study's overrides and, per run_hash (here each trial its own), the
    # mean, std and n of the trials' metrics.
    assert (
        parent.data.params["method"] == "random"
        and "+method=random" in parent.data.params["overrides"]
    )
    assert parent.data.params["space"] == "method.sparsity"
    for child in children:
        run_hash = child.data.tags["run_hash"]
        assert parent.data.metrics[f"{run_hash}/val/acc/n"] == 1
        assert parent.data.metrics[f"{run_hash}/val/acc/mean"] == pytest.approx(
            child.data.metrics["val/acc"]
        )
    assert "best trial" in stdout and "val/acc" in stdout  # a table: a header, then the row
    row = next(
        line for line in stdout.splitlines() if line.strip("│ ").startswith(str(best.number))
    )
    assert f"{best.value:.4g}" in row and stdout.count(f"{best.params['method.sparsity']:.4g}") == 1
    # Restarting a finished study runs nothing more; a larger n_trials continues it.
    search_here([f"sweep={write_sweep(tmp_path)}", "n_trials=4"])
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 4


def test_multi_objective_study_reports_a_pareto_front(tmp_path: Path, search_here) -> None:
    path = write_sweep(
        tmp_path,
        overrides=["model=mlp", "dataset=digits", "debug=fast", "+method=random"],
        space={
            "method.sparsity": {"type": "float", "low": 0.2, "high": 0.98},
            "model.hidden_dims": {"type": "categorical", "choices": ["[32,32]", "[128,128]"]},
        },
        objectives=[
            {"metric": "val/acc", "direction": "maximize"},
            {"metric": "flops/sparse", "direction": "minimize"},
        ],
        sampler={"name": "nsga2", "seed": 0, "population_size": 4},
        n_trials=8,
    )
    stdout = search_here([f"sweep={path}"])
    summary = json.loads(next(tmp_path.glob("outputs/search/**/study.json")).read_text())
    front = summary["pareto_front"]
    assert len(front) >= 3 and "Pareto front" in stdout
    for a in front:  # no member dominates another
        for b in front:
            assert not (
                a["val/acc"] >= b["val/acc"]
                and a["flops/sparse"] <= b["flops/sparse"]
                and (a["val/acc"], a["flops/sparse"]) != (b["val/acc"], b["flops/sparse"])
            )


def test_any_optuna_sampler_by_target_and_a_cma_es_study(tmp_path: Path, search_here) -> None:
    space = {
        "method.sparsity": {"type": "float", "low": 0.3, "high": 0.95},
        "trainer.optimizer.lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
    }
    for node, cls in [
        ({"name": "gp", "seed": 0}, optuna.samplers.GPSampler),
        ({"_target_": "optuna.samplers.QMCSampler", "seed": 0}, optuna.samplers.QMCSampler),
    ]:
        assert isinstance(load_spec(str(write_sweep(tmp_path, sampler=node))).make_sampler(), cls)
    path = write_sweep(
        tmp_path,
        space=space,
        n_trials=3,
        sampler={"_target_": "optuna.samplers.CmaEsSampler", "seed": 0, "n_startup_trials": 1},
        pruner={"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 5},
    )
    search_here([f"sweep={path}"])
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 3
    # Trials after the first were proposed by CMA-ES itself (its state is in the study).
    assert any(key.startswith("cma:") for t in trials[1:] for key in t.system_attrs)


def test_pruned_trials_stop_early_and_count(tmp_path: Path, search_here) -> None:
    # A threshold no accuracy reaches: every trial is pruned after its first validation.
    path = write_sweep(
        tmp_path,
        overrides=[*FAST, "+method=random", "trainer.max_epochs=3"],
        pruner={"name": "threshold", "lower": 1.01, "n_warmup_steps": 0},
        n_trials=2,
    )
    search_here([f"sweep={path}"])
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [0] for t in trials)  # stopped after epoch 0
    for trial in trials:
        results = json.loads((Path(trial.user_attrs["run_dir"]) / "results.json").read_text())
        assert results["status"] == "pruned" and [e["epoch"] for e in results["history"]] == [0]


def _open_stores_at(folder: str, start: float) -> tuple[str, str]:
    import time

    from mlflow import MlflowClient

    from sparsebench.record.mlflow_logging import create_run, tracking_client
    from sparsebench.search.storage import open_storage

    cfg = OmegaConf.create(
        {"logger": {"tracking_uri": f"sqlite:///{folder}/mlflow.db", "experiment_name": "e"}}
    )
    time.sleep(max(0.0, start - time.time()))
    version = open_storage(f"sqlite:///{folder}/optuna.db").get_current_version()
    client, problem = tracking_client(cfg)
    assert problem is None, problem
    assert isinstance(client, MlflowClient)
    return version, create_run(client, "e", "worker", {})


def test_workers_starting_together_share_new_sqlite_stores(tmp_path: Path) -> None:
    # A submitit array or `workers=N` starts its workers at the same moment: all of them create
    # Optuna's and MLflow's schemas on the new files at once (CI saw Optuna's alembic row
    # collide), and all must get the stores and one experiment.
    import time
    from concurrent.futures import ProcessPoolExecutor

    start = time.time() + 3.0
    with ProcessPoolExecutor(3) as pool:
        got = list(pool.map(_open_stores_at, [str(tmp_path)] * 3, [start] * 3))
    assert len({version for version, _ in got}) == 1 and got[0][0]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert {r.info.run_id for r in runs} == {run for _, run in got}
