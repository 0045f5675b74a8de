"""Every command the README and docs/ show still works: a run's overrides compose and validate
(every job of a multirun), a study's and a claim's files load and their trials compose, the
leaderboard's and upload's arguments parse, a benchmark module exists, and each shown bad-input
example prints the ``error:`` sentence the page says it prints. The end-to-end tests run the
representative commands; this walk keeps the pages from drifting from the code."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.fixtures import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAMS = (
    "python -m ",
    ".venv/bin/python -m ",
    "sparsebench ",
    ".venv/bin/mlflow ",
    ".venv/bin/optuna-dashboard ",
)
# Arguments a page writes with a placeholder for the user's own run folder or genotype; left out
# of the walk (tests/pruning and tests/transforms/test_dass.py run them with real values).
PLACEHOLDERS = ("checkpoint=outputs/runs/DATE/TIME", "transform.genotype={...}")


def _commands() -> list[tuple[str, str, str | None]]:
    """(page, command, the error line shown under it or None) for every shown command."""
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        in_fence = False
        for i, raw in enumerate(lines):
            if raw.lstrip().startswith("```"):
                in_fence = not in_fence
                continue
            if not (in_fence or raw.startswith("    ")):
                continue
            line = raw.strip()
            shown = line.startswith("$ ")
            line = line.removeprefix("$ ")
            if not line.startswith(PROGRAMS):
                continue
            j = i
            while line.endswith("\\"):  # continued on the next line
                j += 1
                line = line[:-1] + " " + lines[j].strip()
            command = re.sub(r"\s+#.*$", "", line)  # the comment that follows a command
            error = None
            if shown and j + 1 < len(lines) and lines[j + 1].strip().startswith("error:"):
                error = lines[j + 1].strip()
            found.append((page.name, command, error))
    return found


COMMANDS = _commands()
CHECKED_SPACES: set[tuple[str, ...]] = set()  # a study's space is composed once per process


def test_the_pages_show_commands() -> None:
    programs = {c.split(" -m ")[-1].split()[0] for _, c, _ in COMMANDS}
    assert {"sparsebench", "sparsebench.search", "sparsebench.reproduce"} <= programs
    assert sum(e is not None for _, _, e in COMMANDS) >= 4  # the bad-input examples


def _args(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command.replace(".venv/bin/", ""))
    if words[0] == "python":
        program, args = words[2], words[3:]
    else:
        program, args = words[0], words[1:]
    if program == "sparsebench" and args[:1] in (["leaderboard"], ["upload"]):
        program, args = f"sparsebench.{args[0]}", args[1:]
    return program, [a for a in args if a not in PLACEHOLDERS]


def _check_run(args: list[str], config_name: str) -> list:
    """Validate every job of ``args`` (a multirun's: each value of each swept key) as the
    command line would; returns the composed configs."""
    from sparsebench.config.checks import (
        _multirun_jobs,
        check_group_choices,
        validate,
    )
    from sparsebench.config.compose import compose, normalize_overrides

    args = [a for a in args if a not in ("--cfg", "job", "--help")]
    check_group_choices(args)
    normal = normalize_overrides(args)
    jobs = _multirun_jobs(normal[1:]) if normal[:1] == ["-m"] else [normal]
    configs = []
    for job in jobs:
        where = ["paths.output_dir=."] if config_name == "config" else []  # Hydra's, in a run
        cfg = compose([*(a for a in job if not a.startswith("hydra/")), *where], config_name)
        validate(cfg)
        configs.append(cfg)
    return configs


def _check(program: str, args: list[str], tmp_path: Path, monkeypatch) -> None:
    if program == "sparsebench" and any(a.startswith("resume=") for a in args):
        assert len(args) == 1, "resume= takes no other arguments"  # its run folder: the user's
    elif program == "sparsebench":
        _check_run(args, "config")
    elif program == "sparsebench.search":
        from sparsebench.search.spec import load_spec
        from sparsebench.search.worker import check_space

        for cfg in _check_run(args, "search"):
            spec = load_spec(cfg.sweep, cfg.get("n_trials"), cfg.get("storage"))
            extra = [str(o) for o in cfg.get("trial_overrides") or []]
            if (spec.name, *extra) not in CHECKED_SPACES:  # workers, storage: the same space
                check_space(spec, extra)
                CHECKED_SPACES.add((spec.name, *extra))
    elif program == "sparsebench.reproduce" and args[:1] == ["check"]:
        from sparsebench.reproduce.__main__ import check

        assert check(args[1:]) in (0, 1)  # its arguments are taken (current or not: a verdict)
    elif program == "sparsebench.reproduce":
        # job=I picks one run of the plan that check_plan composes whole: one value suffices
        args = [re.sub(r"^job=.*", "job=0", a) for a in args]
        from sparsebench.reproduce.__main__ import check_plan
        from sparsebench.reproduce.claims import load_claims

        for cfg in _check_run(args, "reproduce"):
            claims = load_claims(str(cfg.claim))
            plan = [(c, j) for c in claims for j in c.jobs(tmp_path, cfg.tier, cfg.seeds)]
            check_plan(plan, [str(o) for o in cfg.overrides])
    elif program in ("sparsebench.leaderboard", "sparsebench.upload"):
        import sparsebench.leaderboard.cli as leaderboard
        import sparsebench.record.upload as upload

        checked = []
        if program == "sparsebench.leaderboard":  # the arguments, not a read of a store
            monkeypatch.setattr(
                leaderboard,
                "_leaderboard",
                lambda a: checked.append(leaderboard.check_arguments(a)) or 0,
            )
            code = leaderboard.main(args)
        else:
            monkeypatch.setattr(upload, "_upload", lambda a: checked.append(a) or 0)
            code = upload.main(args)
        assert code == 0 and checked
    elif program.startswith("benchmarks."):
        assert importlib.util.find_spec(program) is not None, program
    elif program in ("mlflow", "optuna-dashboard"):
        assert shutil.which(program, path=str(Path(sys.executable).parent)), program
    else:
        pytest.fail(f"the walk does not know how to check '{program}'")


@pytest.mark.parametrize(("page", "command", "error"), [c for c in COMMANDS if c[2] is None])
def test_a_shown_command_composes(page, command, error, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlflow.db").touch()  # the default store the leaderboard reads
    program, args = _args(command)
    _check(program, args, tmp_path, monkeypatch)


@pytest.mark.parametrize(("page", "command", "error"), [c for c in COMMANDS if c[2] is not None])
def test_a_shown_bad_input_prints_its_sentence(
    page, command, error, tmp_path: Path, monkeypatch, capsys
) -> None:
    """In-process (``sparsebench.__main__.main`` as the console script calls it): the
    command-line tests run the same path in subprocesses."""
    from sparsebench.__main__ import main

    if "accelerator=gpu" in command and torch.cuda.is_available():
        pytest.skip("the example is for a machine without a GPU")
    program, args = _args(command)
    assert program == "sparsebench"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sparsebench", *args, "logger=none"])
    with pytest.raises(SystemExit) as exit:
        main()
    assert exit.value.code == 2
    expected = error.removesuffix("...").rstrip()
    assert capsys.readouterr().err.strip().startswith(expected), expected


def test_the_extending_page_quotes_the_magnitude_method_as_it_is() -> None:
    page = (REPO / "docs" / "extending.md").read_text()
    code = re.findall(r"```python\n(.*?)```", page, re.S)
    conf = re.findall(r"```yaml\n(.*?)```", page, re.S)
    assert code and conf
    assert code[0] in (REPO / "sparsebench/sparsity/methods/magnitude.py").read_text()
    assert conf[0] in (REPO / "conf/method/magnitude.yaml").read_text()
