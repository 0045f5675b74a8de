"""Running a claim's jobs through the normal runners, and its statistics.

Every job is a normal run (results.json, MLflow, the leaderboard), composed like ``python -m
sparsebench OVERRIDES`` and nested in MLflow under one parent run per claim and tier. A job whose
folder holds a finished ``ok`` run of the same configuration (same run hash) is not run again,
so the suite resumes where it stopped; an interrupted run in its folder continues from its
checkpoint (the runners' own resume).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from sparsebench.errors import ConfigError, first_line
from sparsebench.record.parents import PARENT_FILE, ParentRun
from sparsebench.record.results import status_of
from sparsebench.reproduce.claims import Claim, Comparison, Job
from sparsebench.reproduce.stats import (
    Effect,
    decision_p,
    detectable,
    holm_levels,
    paired_effect,
    threshold,
    verdict,
)

STAMP = "claim.json"  # in a claim's run folder: the version and digest its runs were made for

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
    p: float = 1.0  # the two-sided p of the decision (the effect against the threshold)
    detectable: float = math.inf  # smallest distance from the threshold detectable, 80% power
    holm_level: float | None = None  # the level Holm decides it at (None: not decided)
    holm_effect: Effect | None = None  # the interval at that level
    holm_verdict: str = "inconclusive"

    @property
    def underpowered(self) -> bool:
        """Whether n is too small to detect the effect the claim file says it is meant to."""
        c = self.comparison
        return self.detectable > abs(c.detect - threshold(c.direction, c.delta)[0])


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
    """The claim's MLflow parent run: created once (by whichever process runs a job of it
    first) and published in FOLDER, where every job's recorder finds it."""
    from sparsebench.record.mlflow_logging import tracking_client

    if (folder / PARENT_FILE).is_file():
        return
    client, problem = tracking_client(cfg)
    if problem:
        return  # logging off, or the jobs report the dead store themselves
    spec = claim.tiers[tier]
    params = {
        "claim": claim.claim,
        "paper": claim.paper,
        "version": claim.version,
        "seeds": spec.seeds,
        "budget": spec.budget,
        **{f"arm.{arm}": " ".join(o) for arm, o in claim.arms_of(tier).items()},
        "overrides": " ".join(spec.overrides),
    }
    tags = {"sparsebench.claim": claim.name, "sparsebench.tier": tier}
    name = f"claim {claim.name} ({tier})"
    ParentRun.start(client, cfg.logger.experiment_name, name, tags, params).publish(folder)


def run_job(job: Job, cfg: DictConfig) -> Outcome:
    """Run ``job`` (its config composed by :func:`compose`) unless it finished before; a failing
    run is an outcome, not an error."""
    import importlib

    done = finished(job, cfg)
    if done is not None:
        return Outcome(job, "ok", dict(done["metrics"]), skipped=True)
    runner = importlib.import_module(f"sparsebench.runners.{cfg.runner}")
    try:
        results = runner.run(cfg)
        return Outcome(job, results.status, dict(results.metrics))
    except ConfigError:
        raise  # a claim file that does not compose: one sentence, the suite stops
    except Exception as exc:  # diverged or failed, and recorded so (the record's own rule)
        log.warning("%s-s%d: %s: %s", job.arm, job.seed, type(exc).__name__, first_line(exc))
        return Outcome(job, status_of(exc, []))


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
        result = Result(comparison, pairs, None, "inconclusive", sorted(set(missing)))
        if len(pairs) >= 2:
            diffs = [d for _, d in pairs]
            result.effect = paired_effect(diffs, [0.0] * len(diffs), method=method)
            result.verdict = verdict(result.effect, comparison.direction, comparison.delta)
            result.p = decision_p(diffs, comparison.direction, comparison.delta)
            result.detectable = detectable(diffs)
        results.append(result)
    return results


def correct(results: list[Result], method: str = "t", alpha: float = 0.05) -> None:
    """Holm's correction over every comparison of a report (in place): each result's level,
    its interval at that level and the verdict read off it (inconclusive where Holm stops)."""
    for result, level in zip(results, holm_levels([r.p for r in results], alpha), strict=True):
        result.holm_level, result.holm_effect, result.holm_verdict = level, None, "inconclusive"
        if level is None or result.effect is None:
            continue
        diffs = [d for _, d in result.pairs]
        result.holm_effect = paired_effect(diffs, [0.0] * len(diffs), 1 - level, method)
        c = result.comparison
        result.holm_verdict = verdict(result.holm_effect, c.direction, c.delta)


def stamp(claim: Claim, folder: Path) -> None:
    """Record the claim's version and digest in its run folder, refusing a claim whose content
    changed under the same version (its runs would be reused under other margins)."""
    path = folder / STAMP
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded is not None and recorded.get("version") == claim.version:
        refuse_changed(claim, recorded.get("digest"), str(path))
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": claim.version, "digest": claim.digest}))


def refuse_changed(claim: Claim, digest: str | None, where: str) -> None:
    if digest is not None and digest != claim.digest:
        raise ConfigError(
            f"claim file {claim.path} changed (digest {digest} in {where}, {claim.digest} now) "
            f"but still says version {claim.version}; raise its version and say what changed "
            "and why under 'changes'."
        )


def log_results(
    claim: Claim, folder: Path, results: list[Result], compute: dict[str, float]
) -> None:
    """The effects, intervals and verdicts on the claim's parent run, which then ends."""
    parent = ParentRun.published(folder)
    if parent is None:
        return
    metrics, tags = {}, {}
    for i, result in enumerate(results, start=1):
        if result.effect is not None:
            for key in ("mean", "low", "high"):
                metrics[f"comparison{i}/effect_{key}"] = getattr(result.effect, key)
            metrics[f"comparison{i}/n"] = result.effect.n
        tags[f"comparison{i}/verdict"] = result.verdict
        tags[f"comparison{i}/label"] = result.comparison.label
    metrics.update({f"compute/{key}": value for key, value in compute.items()})
    parent.close(metrics=metrics, tags=tags)  # the numbers are in the report whatever happens


def compute_used(outcomes: list[Outcome]) -> dict[str, float]:
    """Total training seconds and training FLOPs of a claim's runs."""
    return {
        "train_s": sum(o.metrics.get("time/train_s", 0.0) for o in outcomes),
        "train_flops": sum(o.metrics.get("flops/train", 0.0) for o in outcomes),
        "runs": float(len(outcomes)),
    }
