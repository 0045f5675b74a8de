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

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from sparsebench.record.parents import ParentRun
from sparsebench.record.tables import cell, markdown_table, write_csv
from sparsebench.search.spec import StudySpec, baseline_cell, baseline_options
from sparsebench.search.worker import Worker, check_space, compose_trial, mlflow_client

COLUMNS = (
    "arm",
    "sparsity",
    "n",
    "test_acc_mean",
    "test_acc_std",
    "val_acc_mean",
    "sparsity_actual",
    "params_nonzero",
)


class Baseline:
    def __init__(self, cfg: DictConfig, output_dir: Path, spec: StudySpec) -> None:
        self.cfg, self.output_dir, self.spec = cfg, output_dir, spec
        self.options = baseline_options(spec)
        self.extra = ["print_summary=false", *(str(o) for o in cfg.get("trial_overrides") or [])]
        check_space(spec, self.extra)  # before anything trains
        first = (self.options["sparsities"][0], self.options["seeds"][0])
        compose_trial(self._compare(*first, "."))
        self.base = compose_trial([*spec.overrides, *self.extra, "paths.output_dir=."])
        client = mlflow_client(self.base)
        self.parent = None
        if client is not None:  # every run nested under it: the arms' and the studies' trials
            name, tags = f"baseline {spec.name}", {"sparsebench.baseline": spec.name}
            self.parent = ParentRun.start(client, self.base.logger.experiment_name, name, tags)
            self.parent.publish(self.output_dir / "runs")

    def _compare(self, sparsity: float, seed: int, out: str) -> list[str]:
        # Equal sparsity over the same weights: the node arm masks stem and head too.
        return [
            *self.spec.overrides,
            *self.extra,
            f"+method={self.options['compare']}",
            f"method.sparsity={sparsity}",
            "method.dense_stem=false",
            "method.dense_head=false",
            f"seed={seed}",
            f"paths.output_dir={out}",
        ]

    def _train(self, overrides: list[str], name: str, arm: str) -> dict[str, float]:
        from sparsebench.runners.train import run

        out = self.output_dir / "runs" / name
        cfg = compose_trial([*overrides, f"paths.output_dir={out}"])
        return dict(run(cfg, tags={"baseline.arm": arm, "baseline.study": self.spec.name}).metrics)

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
                worker = Worker(
                    self.cfg, self.output_dir / "cells" / study.name, spec=study, parent=self.parent
                )
                worker.run()
                best = worker.study.best_trial  # chosen on validation accuracy
                results.append((search_arm, sparsity, worker.trial_metrics(best)))
                name = f"{self.options['compare']}_s{sparsity:g}_seed{seed}"
                results.append(
                    (
                        compare_arm,
                        sparsity,
                        self._train(
                            self._compare(sparsity, seed, "."), name, self.options["compare"]
                        ),
                    )
                )
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
            table.add_row(*(cell(row[c]) for c in COLUMNS))
        Console(width=140).print(table)
        write_csv(self.output_dir / "baseline.csv", COLUMNS, rows)
        (self.output_dir / "baseline.md").write_text(markdown(rows))
        if self.parent is not None:
            tables = [self.output_dir / "baseline.csv", self.output_dir / "baseline.md"]
            self.parent.close(artifacts=tables)


def table_rows(results: list[tuple[str, float, dict[str, float]]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (arm, sparsity); arms in their order of first appearance."""
    groups: dict[tuple[str, float], list[dict[str, float]]] = {}
    for arm, sparsity, metrics in results:
        groups.setdefault((arm, sparsity), []).append(metrics)
    rows = []
    for (arm, sparsity), members in sorted(groups.items(), key=lambda kv: (kv[0][1], 0)):
        acc = np.array([m["test/acc"] for m in members])
        rows.append(
            {
                "arm": arm,
                "sparsity": sparsity,
                "n": len(members),
                "test_acc_mean": float(acc.mean()),
                "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "val_acc_mean": float(np.mean([m["val/acc"] for m in members])),
                "sparsity_actual": float(np.mean([m.get("sparsity/actual", 0.0) for m in members])),
                "params_nonzero": float(np.mean([m["params/nonzero"] for m in members])),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    return markdown_table(COLUMNS, [[cell(row[c]) for c in COLUMNS] for row in rows]) + "\n"
