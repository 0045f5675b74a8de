"""``python -m sparsebench.reproduce claim=NAME|all tier=quick|full``: check claims of the
sparse-training literature (sweeps/claims/NAME.yaml) with the normal runners.

    python -m sparsebench.reproduce                                   # every claim, quick tier
    python -m sparsebench.reproduce claim=erk_vs_uniform report=docs/claims.md
    python -m sparsebench.reproduce -m claim=rigl_vs_static tier=full job='range(0,30)' \\
        hydra/launcher=submitit_slurm                                 # one cluster job per run
    python -m sparsebench.reproduce claim=rigl_vs_static tier=full     # then: statistics, report

    python -m sparsebench.reproduce check report=docs/claims.md        # is the report current?

Without ``job``, the runs of each claim run here one after the other (finished ones are
skipped, so the command resumes), then each claim's effects, intervals and verdicts are
computed, logged to its MLflow parent run, and the report is written to ROOT/TIER/claims.md and
claims.html (and ``report=PATH``), and logged as artifacts of a ``claims TIER`` run. With
``job=I`` (a multirun launcher's jobs), only the I-th run of the plan runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from sparsebench.config.checks import check_composition
from sparsebench.config.compose import hydra_app, register
from sparsebench.errors import ConfigError
from sparsebench.record.logs import quiet_lightning


def _main(cfg: DictConfig) -> None:
    from sparsebench.config.checks import validate
    from sparsebench.config.resources import CONF_DIR
    from sparsebench.reproduce.check import commit_of
    from sparsebench.reproduce.claims import load_claims
    from sparsebench.reproduce.suite import compose

    quiet_lightning()
    commit = commit_of(CONF_DIR.parent)  # the code the runs are made with: at the start
    try:
        validate(cfg)
        claims = load_claims(str(cfg.claim))
        missing = [c.name for c in claims if cfg.tier not in c.tiers]
        if missing:
            raise ConfigError(f"claim(s) {', '.join(missing)} have no {cfg.tier} tier.")
        root, extra = Path(str(cfg.root)), [str(o) for o in cfg.overrides]
        plan = [(claim, job) for claim in claims for job in claim.jobs(root, cfg.tier, cfg.seeds)]
        check_plan(plan, extra)  # every run composes, before anything runs
        check_versions(claims, cfg)
        if cfg.job is not None:
            if cfg.job >= len(plan):
                raise ConfigError(
                    f"job must be below {len(plan)} (the plan's runs), got {cfg.job}."
                )
            run_plan([plan[cfg.job]], cfg, extra)
            return
        sections = run_plan(plan, cfg, extra)
        write_report(sections, cfg, compose(plan[0][1], extra), commit)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def check_plan(plan, extra: list[str]) -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sparsebench.config.checks import validate
    from sparsebench.errors import first_line
    from sparsebench.reproduce.suite import compose

    seen = set()
    for claim, job in plan:
        if (claim.name, job.arm) in seen:
            continue
        seen.add((claim.name, job.arm))
        try:
            validate(compose(job, extra))
        except ConfigError as exc:
            raise ConfigError(f"claim {claim.name}, arm {job.arm}: {exc}") from None
        except (HydraException, OmegaConfBaseException) as exc:
            raise ConfigError(
                f"claim {claim.name}, arm {job.arm} does not compose ({first_line(exc)})."
            ) from None


def check_versions(claims, cfg: DictConfig) -> None:
    """Refuse a claim whose content changed under the same version: against the version and
    digest its run folder records and those of the report it rewrites; then stamp them."""
    from sparsebench.reproduce.report import meta_of
    from sparsebench.reproduce.suite import refuse_changed, stamp

    root = Path(str(cfg.root))
    for path in {root / cfg.tier / "claims.md", *([Path(str(cfg.report))] if cfg.report else [])}:
        try:
            meta = meta_of(path.read_text()) or {}
        except OSError:
            continue
        for claim in claims:
            entry = (meta.get("claims") or {}).get(claim.name) or {}
            if entry.get("version") == claim.version:
                refuse_changed(claim, entry.get("digest"), str(path))
    for claim in claims:
        stamp(claim, claim.folder(root, cfg.tier))


def run_plan(plan, cfg: DictConfig, extra: list[str]):
    """Run the plan's jobs; per claim (claim, outcomes, results, compute)."""
    from sparsebench.reproduce.suite import (
        analyse,
        compose,
        compute_used,
        log_results,
        parent_run,
        run_job,
    )

    sections, outcomes, current = [], [], None
    whole_plan = cfg.job is None

    def close(claim) -> None:
        results = analyse(claim, outcomes)
        compute = compute_used(outcomes)
        if whole_plan:
            log_results(claim, claim.folder(Path(str(cfg.root)), cfg.tier), results, compute)
        sections.append((claim, list(outcomes), results, compute))
        for result in results:
            effect = result.effect.describe() if result.effect else "too few pairs"
            print(
                f"{claim.name}: {result.comparison.label}: {effect} -> {result.verdict}", flush=True
            )

    for i, (claim, job) in enumerate(plan, start=1):
        if current is not None and claim is not current:
            close(current)
            outcomes.clear()
        current = claim
        job_cfg = compose(job, extra)
        parent_run(claim, cfg.tier, claim.folder(Path(str(cfg.root)), cfg.tier), job_cfg)
        started = time.perf_counter()
        outcome = run_job(job, job_cfg)
        outcomes.append(outcome)
        how = "finished before" if outcome.skipped else f"{time.perf_counter() - started:.0f} s"
        print(
            f"[{i}/{len(plan)}] {claim.name} {job.folder.name}: {outcome.status} ({how})",
            flush=True,
        )
    if current is not None and whole_plan:
        close(current)
    return sections


def write_report(sections, cfg: DictConfig, base: DictConfig, commit: tuple[str, bool]) -> None:
    """The report files, logged to the tracking store of ``base`` (a run of the plan)."""
    from sparsebench.reproduce.report import html_page, markdown
    from sparsebench.reproduce.suite import correct

    correct([result for _, _, results, _ in sections for result in results])
    extra = [str(o) for o in cfg.overrides]
    command = f"python -m sparsebench.reproduce claim={cfg.claim} tier={cfg.tier}"
    if cfg.seeds is not None:
        command += f" seeds={cfg.seeds}"
    if extra:
        command += " 'overrides=[" + ",".join(extra) + "]'"
    text = markdown(cfg.tier, sections, command, cfg.seeds, extra, commit)
    folder = Path(str(cfg.root)) / cfg.tier
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "claims.md").write_text(text)
    page = html_page(cfg.tier, sections, folder / "claims.html")
    written = [folder / "claims.md", page]
    if cfg.report:
        Path(str(cfg.report)).write_text(text)
        written.append(Path(str(cfg.report)))
    print("report: " + ", ".join(str(p) for p in written))
    log_report(cfg, base, folder, page)


def log_report(cfg: DictConfig, base: DictConfig, folder: Path, page: Path) -> None:
    """The report as artifacts of a ``claims TIER`` MLflow run."""
    from sparsebench.record.mlflow_logging import create_run, tracking_client

    client, problem = tracking_client(base)
    if problem:
        return
    try:
        run_id = create_run(
            client,
            base.logger.experiment_name,
            f"claims {cfg.tier}",
            {"sparsebench.claims": str(cfg.claim)},
        )
        for path in (folder / "claims.md", page, folder / "plotly.min.js"):
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
        print(f"report logged as MLflow run {run_id}")
    except Exception as exc:  # the report is on disk; MLflow trouble loses nothing
        print(f"warning: the report was not logged to MLflow ({exc})", file=sys.stderr)


def check(args: list[str]) -> int:
    """``check [report=PATH]``: whether the report is current for HEAD (exit 0) or not (1)."""
    from sparsebench.config.resources import CONF_DIR
    from sparsebench.reproduce.check import commit_of, problems

    report = Path("docs/claims.md")
    for arg in args:
        key, sep, value = arg.partition("=")
        if key != "report" or not sep or not value:
            print(f"error: check takes report=PATH, got '{arg}'.", file=sys.stderr)
            return 2
        report = Path(value)
    repo = CONF_DIR.parent
    found = problems(report, repo)
    head = commit_of(repo)[0][:12]
    if found:
        print(f"{report} is not current for HEAD {head}: " + "; ".join(found) + ".")
        return 1
    print(f"{report} is current for HEAD {head}.")
    return 0


def main() -> None:
    if sys.argv[1:2] == ["check"]:
        raise SystemExit(check(sys.argv[2:]))
    register()
    hydra_app("reproduce", _main, lambda args: check_composition(args, "reproduce"))


if __name__ == "__main__":
    main()
