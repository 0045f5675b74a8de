"""Running a claim's jobs through the normal runners, and its statistics.

Every job is a normal run (results.json, MLflow, the leaderboard), composed like ``python -m
sparsebench OVERRIDES`` and nested in MLflow under one parent run per claim and tier. A job whose
folder holds a finished ``ok`` run of the same configuration (same run hash) is not run again,
so the suite resumes where it stopped; an interrupted run in its folder continues from its
checkpoint (the runners' own resume).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from sparsebench.errors import ConfigError, first_line
from sparsebench.record.sweep import PARENT_FILE
from sparsebench.reproduce.claims import Claim, Comparison, Job
from sparsebench.reproduce.stats import Effect, paired_effect, verdict

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one job left: its status and metrics (results.json), or why it has none."""

    job: Job
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # finished before this call


@dataclass
class Result:
    """One comparison of a claim: the pairs it used, the effect and the verdict."""

    comparison: Comparison
    pairs: list[tuple[int, float]]  # (seed, paired difference)
    effect: Effect | None
    verdict: str
    missing: list[str]  # "ARM-sSEED (status)" of the runs without the metric


def compose(job: Job, extra: list[str]) -> DictConfig:
    from sparsebench.search.worker import compose_trial

    quiet = ["print_summary=false", "trainer.enable_progress_bar=false"]
    return compose_trial([*job.overrides, *quiet, *extra, f"paths.output_dir={job.folder}"])


def finished(job: Job, cfg: DictConfig) -> dict | None:
    """The job's results.json when it holds a finished ok run of this configuration."""
    from sparsebench.record.identity import run_hash

    path = job.folder / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = data.get("tags", {}).get("run_hash") == run_hash(cfg)
    return data if same and data.get("status") == "ok" else None


def parent_run(claim: Claim, tier: str, folder: Path, cfg: DictConfig) -> None:
    """The claim's MLflow parent run (created once; its id in FOLDER/mlflow_parent.json, where
    every job's recorder finds it)."""
    from mlflow.entities import Param

    from sparsebench.record.mlflow_logging import create_run, tracking_client

    if (folder / PARENT_FILE).is_file():
        return
    client, problem = tracking_client(cfg)
    if problem:
        return  # logging off, or the jobs report the dead store themselves
    run_id = create_run(client, cfg.logger.experiment_name, f"claim {claim.name} ({tier})",
                        {"sparsebench.claim": claim.name, "sparsebench.tier": tier})  # fmt: skip
    params = {"claim": claim.claim[:6000], "paper": claim.paper[:6000], "version": claim.version,
              "seeds": claim.tiers[tier].seeds, "budget": claim.tiers[tier].budget[:6000],
              **{f"arm.{arm}": " ".join(o)[:6000] for arm, o in claim.arms.items()},
              "overrides": " ".join(claim.tiers[tier].overrides)[:6000]}  # fmt: skip
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PARENT_FILE).write_text(json.dumps({"run_id": run_id,
                                                  "tracking_uri": client.tracking_uri}))  # fmt: skip


def run_job(job: Job, cfg: DictConfig) -> Outcome:
    """Run ``job`` (its config composed by :func:`compose`) unless it finished before; a failing
    run is an outcome, not an error."""
    import importlib

    done = finished(job, cfg)
    if done is not None:
        return Outcome(job, "ok", dict(done["metrics"]), skipped=True)
    runner = importlib.import_module(f"sparsebench.runners.{cfg.runner}")
    try:
        metrics = runner.run(cfg)
        return Outcome(job, "ok", dict(metrics))
    except ConfigError:
        raise  # a claim file that does not compose: one sentence, the suite stops
    except Exception as exc:  # diverged or failed: recorded in its results.json
        log.warning("%s-s%d: %s: %s", job.arm, job.seed, type(exc).__name__, first_line(exc))
        status = "failed"
        with contextlib.suppress(OSError, ValueError, KeyError):
            status = json.loads((job.folder / "results.json").read_text())["status"]
        return Outcome(job, status)


def selected(claim: Claim, outcomes: list[Outcome]) -> list[Outcome]:
    """One outcome per (arm, seed): a search arm's best candidate by its ``by`` metric (among
    the candidates that have it; none when no candidate does)."""
    out, best = [], {}
    for outcome in outcomes:
        search = claim.searches.get(outcome.job.arm)
        if search is None:
            out.append(outcome)
            continue
        score = outcome.metrics.get(search.by)
        if score is None or not math.isfinite(score):
            continue
        key = (outcome.job.arm, outcome.job.seed)
        if key not in best or score > best[key].metrics[search.by]:
            best[key] = outcome
    return out + list(best.values())


def analyse(claim: Claim, outcomes: list[Outcome], method: str = "t") -> list[Result]:
    """Each comparison over the seeds where every arm it names has the metric."""
    by = {(o.job.arm, o.job.seed): o for o in selected(claim, outcomes)}
    seeds = sorted({o.job.seed for o in outcomes})
    results = []
    for comparison in claim.comparisons:
        arms = (*comparison.a, *comparison.b)
        pairs, missing = [], []
        for seed in seeds:
            values = {}
            for arm in arms:
                outcome = by.get((arm, seed))
                value = outcome.metrics.get(comparison.metric) if outcome else None
                if value is None or not math.isfinite(value):
                    missing.append(f"{arm}-s{seed} ({outcome.status if outcome else 'not run'})")
                else:
                    values[arm] = float(value)
            if len(values) == len(set(arms)):
                diff = sum(values[a] for a in comparison.a) - sum(values[b] for b in comparison.b)
                pairs.append((seed, diff))
        if len(pairs) >= 2:
            diffs = [d for _, d in pairs]
            effect = paired_effect(diffs, [0.0] * len(diffs), method=method)
            decided = verdict(effect, comparison.direction, comparison.delta)
        else:
            effect, decided = None, "inconclusive"
        results.append(Result(comparison, pairs, effect, decided, sorted(set(missing))))
    return results


def log_results(
    claim: Claim, folder: Path, results: list[Result], compute: dict[str, float]
) -> None:
    """The effects, intervals and verdicts on the claim's parent run, which then ends."""
    path = folder / PARENT_FILE
    if not path.is_file():
        return
    from mlflow import MlflowClient

    parent = json.loads(path.read_text())
    client = MlflowClient(tracking_uri=parent["tracking_uri"])
    try:
        for i, result in enumerate(results, start=1):
            if result.effect is not None:
                for key in ("mean", "low", "high"):
                    client.log_metric(parent["run_id"], f"comparison{i}/effect_{key}",
                                      getattr(result.effect, key))  # fmt: skip
                client.log_metric(parent["run_id"], f"comparison{i}/n", result.effect.n)
            client.set_tag(parent["run_id"], f"comparison{i}/verdict", result.verdict)
            client.set_tag(parent["run_id"], f"comparison{i}/label", result.comparison.label)
        for key, value in compute.items():
            client.log_metric(parent["run_id"], f"compute/{key}", value)
        client.set_terminated(parent["run_id"])
    except Exception as exc:  # the numbers are in the report; MLflow trouble loses nothing
        log.warning("could not log claim %s to MLflow (%s)", claim.name, first_line(exc))


def compute_used(outcomes: list[Outcome]) -> dict[str, float]:
    """Total training seconds and training FLOPs of a claim's runs."""
    return {
        "train_s": sum(o.metrics.get("time/train_s", 0.0) for o in outcomes),
        "train_flops": sum(o.metrics.get("flops/train", 0.0) for o in outcomes),
        "runs": float(len(outcomes)),
    }
