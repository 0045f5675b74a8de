"""The reproduction suite: claim files checked in one sentence, and one claim end to end at a
tiny size (real runs, statistics, verdict, MLflow, report, resume)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from sparsebench.errors import ConfigError
from sparsebench.reproduce.claims import available_claims, load_claim
from sparsebench.reproduce.stats import paired_effect, verdict
from tests.fixtures import REPO

TINY = {
    "version": 1,
    "paper": "a test",
    "claim": "Dense beats 95% random sparse training on digits.",
    "reference": "none",
    "metric": "test/acc",
    "arms": {
        "dense": ["model=mlp"],
        "random": ["model=mlp", "+method=random", "method.sparsity=0.95"],
    },
    "comparisons": [
        {"a": "dense", "b": "random", "direction": "greater", "delta": 0.0, "detect": 0.05},
        {
            "a": "random",
            "b": "dense",
            "direction": "less",
            "delta": 0.0,
            "metric": "flops/sparse",
            "label": "FLOPs",
            "detect": -1000.0,
        },
    ],
    "tiers": {
        "quick": {
            "seeds": 2,
            "budget": "seconds",
            "overrides": ["dataset=digits", "debug=fast", "hardware.threads=1"],
        }
    },
    "changes": [],
}


def write(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"comparisons": [{"a": "dense", "b": "random", "direction": "bigger", "delta": 0}]},
            "direction must be one of greater, less, not_less, not_greater, got 'bigger'",
        ),
        (
            {"comparisons": [{"a": "dense", "b": "nope", "direction": "greater", "delta": 0}]},
            "'b' must name arms of dense, random, got 'nope'",
        ),
        (
            {"arms": {"a": ["checkpoint=@b"], "b": ["model=mlp"]}},
            "arm 'a' refers to '@b', which must be an arm listed before it",
        ),
        ({"version": 2}, "version 2 needs 1 line(s) under 'changes'"),
        (
            {"tiers": {**TINY["tiers"], "full": {"seeds": 2, "arms": {"pruned": []}}}},
            "tier full: arms must map arms of the file (dense, random; not searches)",
        ),
        ({"seed": 3}, "unknown field(s) seed"),
        (
            {"comparisons": [{"a": "dense", "b": "random", "direction": "greater", "delta": 0}]},
            "comparison 1: detect (the effect A - B the claim is meant to detect",
        ),
    ],
)
def test_claim_files_are_checked_in_one_sentence(tmp_path: Path, changes, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_claim(str(write(tmp_path, **changes)))


def test_a_tier_replaces_the_arms_it_names(tmp_path: Path) -> None:
    full = {"seeds": 2, "overrides": ["model=hf_causal_lm"], "arms": {"dense": ["runner=prune"]}}
    claim = load_claim(str(write(tmp_path, tiers={**TINY["tiers"], "full": full})))
    jobs = {(j.arm, j.seed): j.overrides for j in claim.jobs(tmp_path, "full")}
    assert jobs["dense", 1] == ("model=hf_causal_lm", "runner=prune", "seed=1")
    assert jobs["random", 0][1:] == (*TINY["arms"]["random"], "seed=0")  # the file's own
    assert claim.arms_of("quick") == claim.arms  # the other tier keeps the file's arms


def test_every_shipped_claim_composes() -> None:
    from sparsebench.reproduce.__main__ import check_plan

    for name in available_claims():
        claim = load_claim(name)
        for tier in claim.tiers:
            check_plan([(claim, job) for job in claim.jobs(Path("/tmp/x"), tier, 1)], [])


def test_a_tiny_claim_end_to_end(tmp_path: Path) -> None:
    claim = write(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}

    def reproduce(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "sparsebench.reproduce",
                *args,
                f"claim={claim}",
                "report=claims.md",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )

    # The plan's first two runs as a launcher's jobs (Hydra's multirun; submitit on a cluster),
    # then the plain command runs the rest, skips those, and reports.
    jobs = reproduce("-m", "job=0,1")
    assert jobs.returncode == 0, jobs.stderr[-3000:]
    folder = tmp_path / "outputs/claims/quick/tiny"
    assert sorted(p.parent.name for p in folder.glob("*/results.json")) == ["dense-s0", "dense-s1"]
    assert not (tmp_path / "claims.md").exists()
    proc = reproduce()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished before") == 2
    runs = {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/results.json")}
    assert sorted(runs) == ["dense-s0", "dense-s1", "random-s0", "random-s1"]
    assert all(r["status"] == "ok" for r in runs.values())
    # The statistics are those of the runs' own records.
    acc = {k: r["metrics"]["test/acc"] for k, r in runs.items()}
    effect = paired_effect([acc["dense-s0"], acc["dense-s1"]], [acc["random-s0"], acc["random-s1"]])
    expected = verdict(effect, "greater", 0.0)
    report = (tmp_path / "claims.md").read_text()
    assert f"{effect.describe()} → " in report
    assert f"| {expected} " in report or f"**{expected}**" in report
    # FLOPs of 95% sparse vs dense: the same every seed, so a point interval: reproduced.
    assert "**FLOPs** (flops/sparse, less, smallest effect 0, meant to detect -1000): " in report
    assert report.count("reproduced") >= 1
    assert (tmp_path / "outputs/claims/quick/claims.html").stat().st_size > 1000
    # MLflow: one parent per claim holding the verdicts; every run nested under it.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("sparsebench").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`sparsebench.claim` = 'tiny'")
    assert parent.data.tags["comparison2/verdict"] == "reproduced"
    assert parent.data.tags["comparison1/verdict"] == expected
    assert parent.data.metrics["comparison1/effect_mean"] == pytest.approx(effect.mean)
    children = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert {c.info.run_id for c in children} == {r["mlflow"]["run_id"] for r in runs.values()}
    (suite,) = client.search_runs([experiment], "tags.`sparsebench.claims` != ''")
    assert {a.path for a in client.list_artifacts(suite.info.run_id)} >= {
        "claims.md",
        "claims.html",
    }
    # Both verdicts and the power column; the claim's identity; a changed margin under the same
    # version is refused before anything runs.
    assert "Holm: level, verdict" in report and "detectable (80% power)" in report
    assert load_claim(str(claim)).digest in report
    claim.write_text(claim.read_text().replace("delta: 0.0", "delta: 0.01", 1))
    refused = reproduce()
    assert refused.returncode == 2 and "still says version 1" in refused.stderr
    check_a_one_claim_report(tmp_path, report)


def check_a_one_claim_report(tmp_path: Path, report: str) -> None:
    """``reproduce check`` on the report just made, in a repository of its own: current at the
    commit it names (the report itself may be committed after), stale after any other change."""
    from sparsebench.reproduce.check import problems
    from sparsebench.reproduce.report import META, meta_of

    repo, claims = tmp_path / "repo", tmp_path / "claims"
    (repo / "docs").mkdir(parents=True)
    claims.mkdir()
    (claims / "tiny.yaml").write_text(yaml.safe_dump(TINY))  # the version the report was of

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    git("init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("commit", "-qm", "code")
    meta = {**meta_of(report), "commit": git("rev-parse", "HEAD"), "dirty": False}
    text = META.sub(f"<!-- sparsebench-claims {json.dumps(meta)} -->", report, count=1)
    (repo / "docs/claims.md").write_text(text)
    git("add", "-A")
    git("commit", "-qm", "the report")
    assert problems(repo / "docs/claims.md", repo, claims) == []
    (repo / "code.py").write_text("x = 2\n")
    git("commit", "-qam", "a change")
    (found,) = problems(repo / "docs/claims.md", repo, claims)
    assert "1 file(s) changed since" in found and "code.py" in found
    (claims / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "version": 2, "changes": ["x"]}))
    assert any(
        "claim tiny is version 2" in p for p in problems(repo / "docs/claims.md", repo, claims)
    )


def test_a_search_arm_is_the_best_of_its_candidates(tmp_path: Path) -> None:
    from sparsebench.reproduce.suite import Outcome, analyse, selected

    arms = {
        "searched": {
            "best_of": 3,
            "by": "val/acc",
            "vary": "method.node_seed",
            "overrides": ["+method=node"],
        },
        "random": ["+method=random"],
    }
    comparisons = [
        {"a": "searched", "b": "random", "direction": "not_greater", "delta": 0.0, "detect": 0.0}
    ]
    claim = load_claim(str(write(tmp_path, arms=arms, comparisons=comparisons)))
    jobs = claim.jobs(tmp_path, "quick")
    searched = [j for j in jobs if j.arm == "searched"]
    assert len(jobs) == 3 * 2 + 2 and [j.folder.name for j in searched][:3] == [
        "searched-s0-c0",
        "searched-s0-c1",
        "searched-s0-c2",
    ]
    assert [j.overrides[-1] for j in searched] == [f"method.node_seed={v}" for v in range(6)]
    # Candidates chosen on val/acc, compared on test/acc.
    val = {(0, 0): 0.5, (0, 1): 0.9, (0, 2): 0.7, (1, 0): 0.8, (1, 1): 0.6, (1, 2): None}
    outcomes = [
        Outcome(
            j,
            "ok",
            {
                "test/acc": 0.1 * j.candidate + j.seed,
                **(
                    {"val/acc": val[(j.seed, j.candidate)]}
                    if val[(j.seed, j.candidate)] is not None
                    else {}
                ),
            },
        )
        for j in searched
    ]
    outcomes += [Outcome(j, "ok", {"test/acc": 0.05 + j.seed}) for j in jobs if j.arm == "random"]
    chosen = {
        (o.job.seed, o.job.candidate) for o in selected(claim, outcomes) if o.job.arm == "searched"
    }
    assert chosen == {(0, 1), (1, 0)}
    (result,) = analyse(claim, outcomes)
    assert [round(d, 6) for _, d in result.pairs] == [0.05, -0.05]
    with pytest.raises(ConfigError, match="not a search"):
        load_claim(str(write(tmp_path, arms={**arms, "pruned": ["checkpoint=@searched"]})))


def test_every_shipped_claim_is_found_and_loads() -> None:
    from sparsebench.reproduce.claims import load_claims

    shipped = sorted(p.stem for p in (REPO / "sweeps" / "claims").glob("*.yaml"))
    assert shipped and available_claims() == shipped  # read where the package installs them
    assert [c.name for c in load_claims("all")] == shipped
