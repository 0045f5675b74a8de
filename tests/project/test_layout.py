"""The layout's rules that a reader relies on: modules a reader can hold in mind (at most 400
lines; the training entry points under 150), the formatter's output accepted (no line that skips it),
and test modules that never import one another (what they share is a helper module)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.fixtures import REPO

FOLDERS = ("sparsebench", "runners", "benchmarks", "tests", "hydra_plugins")
MAX_LINES = 400
ENTRY_POINTS = ("build.py", "fit.py", "measure.py")  # sparsebench/training/: a run's three steps


def _modules() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (REPO / folder).rglob("*.py"))


def test_no_module_is_over_400_lines_and_the_training_steps_are_short() -> None:
    sizes = {p.relative_to(REPO): len(p.read_text().splitlines()) for p in _modules()}
    assert len(sizes) > 100
    assert {str(p): n for p, n in sizes.items() if n > MAX_LINES} == {}
    training = {name: sizes[Path("sparsebench/training") / name] for name in ENTRY_POINTS}
    assert all(n < 150 for n in training.values()), training


def test_the_formatter_s_output_is_accepted() -> None:
    skipped = [str(p.relative_to(REPO)) for p in _modules() if "fmt: " + "skip" in p.read_text()]
    assert skipped == []  # `make test` runs `ruff format --check` on the same folders


def test_test_modules_import_helpers_never_each_other() -> None:
    imports = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests."):
                imports.setdefault(str(path.relative_to(REPO)), []).append(node.module)
    assert imports  # they do share helpers (tests/fixtures.py)
    wrong = {p: m for p, ms in imports.items() for m in ms if m.split(".")[-1].startswith("test_")}
    assert wrong == {}
