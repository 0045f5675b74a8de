"""The import layers (docs/architecture.md) are a contract that ``make test`` checks with
import-linter: the tree keeps them, and an import that runs against them breaks the build."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}, timeout=120)  # fmt: skip


def test_the_tree_keeps_its_layers_and_an_upward_import_breaks_them(tmp_path: Path) -> None:
    kept = _lint(REPO)
    assert kept.returncode == 0 and "2 kept, 0 broken" in kept.stdout, kept.stdout[-2000:]

    shutil.copytree(REPO / "sparsebench", tmp_path / "sparsebench")  # links copied as folders
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    masks = tmp_path / "sparsebench" / "sparsity" / "masks.py"
    masks.write_text(masks.read_text() + "\nimport sparsebench.training  # upwards\n")
    broken = _lint(tmp_path)
    assert broken.returncode != 0
    assert "sparsebench.sparsity is not allowed to import sparsebench.training" in broken.stdout
