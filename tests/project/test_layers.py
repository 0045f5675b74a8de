"""The import layers (docs/architecture.md) are a contract that ``make test`` checks with
import-linter: the tree keeps them, and an import that runs against them breaks the build."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(view: Path) -> subprocess.CompletedProcess:
    """lint-imports on ``view``: the package as installed, runners/ inside it (the Makefile
    checks the same view)."""
    shutil.copy(REPO / "pyproject.toml", view)
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=view,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(view), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def _view(folder: Path) -> Path:
    shutil.copytree(REPO / "sparsebench", folder / "sparsebench")
    shutil.copytree(REPO / "runners", folder / "sparsebench" / "runners")
    return folder


@pytest.mark.parametrize(
    ("module", "line", "message"),
    [
        (
            "sparsity/masks.py",
            "import sparsebench.training",
            "sparsebench.sparsity is not allowed to import sparsebench.training",
        ),
        (
            "training/module.py",
            "import sparsebench.runners.train",
            "sparsebench.training is not allowed to import sparsebench.runners",
        ),
        (
            "runners/train.py",
            "import sparsebench.search.worker",
            "sparsebench.runners is not allowed to import sparsebench.search",
        ),
        (
            "record/results.py",
            "import sparsebench.leaderboard.rows",
            "sparsebench.record is not allowed to import sparsebench.leaderboard",
        ),
        (
            "errors.py",
            "import sparsebench.config.schemas",
            "sparsebench.errors is not allowed to import sparsebench.config",
        ),
    ],
)
def test_an_upward_import_breaks_the_layers(
    tmp_path: Path, module: str, line: str, message: str
) -> None:
    view = _view(tmp_path)
    path = view / "sparsebench" / module
    path.write_text(path.read_text() + f"\n{line}  # upwards\n")
    broken = _lint(view)
    assert broken.returncode != 0
    assert message in broken.stdout, broken.stdout[-3000:]


def test_the_tree_keeps_its_layers(tmp_path: Path) -> None:
    kept = _lint(_view(tmp_path))
    assert kept.returncode == 0 and "2 kept, 0 broken" in kept.stdout, kept.stdout[-2000:]
