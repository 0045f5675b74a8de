"""The random-search baseline for sparse architecture search (Farahani et al. 2024).

For every target sparsity and seed: a random search over the node space of an
over-parameterised network (the study's ``space`` over the ``node`` method's options, with
``n_trials`` candidates, the best chosen on ``val/acc``), a random weight-level sparse network
of equal sparsity, and, per seed, the dense parent. The table gives test accuracy mean and std
over the seeds per arm. The paper's finding: the searched node masks are no better than random
sparse configurations, which makes random sparsity the neutral baseline a search must beat.

Each (sparsity, seed) search is its own Optuna study in the sweep's storage, so an interrupted
comparison resumes where it stopped; every run is nested under one MLflow run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from sparsebench.record.mlflow_logging import create_run
from sparsebench.record.sweep import PARENT_FILE
from sparsebench.search.spec import StudySpec, baseline_cell, baseline_options
from sparsebench.search.worker import Worker, check_space, compose_trial, mlflow_client

COLUMNS = ("arm", "sparsity", "n", "test_acc_mean", "test_acc_std", "val_acc_mean",
           "sparsity_actual", "params_nonzero")  # fmt: skip


class Baseline:
    def __init__(self, cfg: DictConfig, output_dir: Path, spec: StudySpec) -> None:
        self.cfg, self.output_dir, self.spec = cfg, output_dir, spec
        self.options = baseline_options(spec)
        self.extra = ["print_summary=false", *(str(o) for o in cfg.get("trial_overrides") or [])]
        check_space(spec, self.extra)  # before anything trains
        first = (self.options["sparsities"][0], self.options["seeds"][0])
        compose_trial(self._compare(*first, "."))
        self.base = compose_trial([*spec.overrides, *self.extra, "paths.output_dir=."])
        self.client = mlflow_client(self.base)
        self.parent = None
        if self.client is not None:
            self.parent = create_run(self.client, self.base.logger.experiment_name,
                                     f"baseline {spec.name}", {"sparsebench.baseline": spec.name})  # fmt: skip
            runs = self.output_dir / "runs"
            runs.mkdir(parents=True, exist_ok=True)
            (runs / PARENT_FILE).write_text(json.dumps({"run_id": self.parent}))

    def _compare(self, sparsity: float, seed: int, out: str) -> list[str]:
        # Equal sparsity over the same weights: the node arm masks stem and head too.
        return [*self.spec.overrides, *self.extra, f"+method={self.options['compare']}",
                f"method.sparsity={sparsity}", "method.dense_stem=false",
                "method.dense_head=false", f"seed={seed}", f"paths.output_dir={out}"]  # fmt: skip

    def _train(self, overrides: list[str], name: str, arm: str) -> dict[str, float]:
        from sparsebench.runners.train import run

        out = self.output_dir / "runs" / name
        cfg = compose_trial([*overrides, f"paths.output_dir={out}"])
        return run(cfg, tags={"baseline.arm": arm, "baseline.study": self.spec.name})

    def run(self) -> list[dict[str, Any]]:
        results: list[tuple[str, float, dict[str, float]]] = []
        search_arm = f"random search ({self.options['method']})"
        compare_arm = f"{self.options['compare']} (weights)"
        for seed in self.options["seeds"]:
            dense = [*self.spec.overrides, *self.extra, f"seed={seed}"]
            results.append(("dense parent", 0.0, self._train(dense, f"dense_seed{seed}", "dense")))
        for sparsity in self.options["sparsities"]:
            for seed in self.options["seeds"]:
                study = baseline_cell(self.spec, self.options, sparsity, seed)
                worker = Worker(self.cfg, self.output_dir / "cells" / study.name, spec=study,
                                parent=self.parent)  # fmt: skip
                worker.run()
                best = worker.study.best_trial  # chosen on validation accuracy
                chosen = json.loads((Path(best.user_attrs["run_dir"]) / "results.json").read_text())
                results.append((search_arm, sparsity, chosen["metrics"]))
                name = f"{self.options['compare']}_s{sparsity:g}_seed{seed}"
                results.append((compare_arm, sparsity, self._train(
                    self._compare(sparsity, seed, "."), name, self.options["compare"])))  # fmt: skip
        rows = table_rows(results)
        self.report(rows)
        return rows

    def report(self, rows: list[dict[str, Any]]) -> None:
        table = Table(
            title=f"{self.spec.name}: test accuracy over {len(self.options['seeds'])} seeds"
        )
        for column in COLUMNS:
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(*(_cell(row[c]) for c in COLUMNS))
        Console(width=140).print(table)
        with (self.output_dir / "baseline.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        (self.output_dir / "baseline.md").write_text(markdown(rows))
        if self.client is not None and self.parent:
            try:
                for name in ("baseline.csv", "baseline.md"):
                    self.client.log_artifact(self.parent, str(self.output_dir / name))
                self.client.set_terminated(self.parent)
            except Exception as exc:  # the table is on disk; MLflow trouble loses nothing
                print(f"could not log the table to MLflow ({exc})")


def table_rows(results: list[tuple[str, float, dict[str, float]]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (arm, sparsity); arms in their order of first appearance."""
    groups: dict[tuple[str, float], list[dict[str, float]]] = {}
    for arm, sparsity, metrics in results:
        groups.setdefault((arm, sparsity), []).append(metrics)
    rows = []
    for (arm, sparsity), members in sorted(groups.items(), key=lambda kv: (kv[0][1], 0)):
        acc = np.array([m["test/acc"] for m in members])
        rows.append({
            "arm": arm, "sparsity": sparsity, "n": len(members),
            "test_acc_mean": float(acc.mean()), "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "val_acc_mean": float(np.mean([m["val/acc"] for m in members])),
            "sparsity_actual": float(np.mean([m.get("sparsity/actual", 0.0) for m in members])),
            "params_nonzero": float(np.mean([m["params/nonzero"] for m in members])),
        })  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
