"""The wheel is the product: built, installed into a fresh virtual environment, it composes and
runs ``python -m sparsebench`` from an empty folder with the configs it ships."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_the_wheel_runs_from_an_empty_folder(tmp_path: Path) -> None:
    source = tmp_path / "source"  # setuptools writes build/ beside the sources: not in the checkout
    for part in ("sparsebench", "runners", "conf", "sweeps", "hydra_plugins", "pyproject.toml",
                 "README.md"):  # fmt: skip
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, source / part, **({"symlinks": True} if copy is shutil.copytree else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("sparsebench-*.whl")
    fresh = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=300
    )
    python = fresh / "bin" / "python"
    # --ignore-installed: pip would otherwise uninstall this environment's sparsebench first.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", "--prefix", str(fresh), str(wheel)],
                   check=True, timeout=300)  # fmt: skip
    # The dependencies: this environment's site-packages, added as a plain path (its .pth files,
    # among them the editable install of the checkout, are not processed there).
    (own,) = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                            capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    Path(own, "dependencies.pth").write_text(site.getsitepackages()[0] + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    where = subprocess.run([str(python), "-c", "import sparsebench.config as c; print(c.CONF_DIR)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(fresh)), where.stdout  # the wheel's own configs
    proc = subprocess.run([str(python), "-m", "sparsebench", "debug=fast", "hardware.threads=1"],
                          cwd=empty, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = empty.glob("outputs/runs/*/*/results.json")
    assert json.loads(results.read_text())["status"] == "ok"
    assert (empty / "mlflow.db").is_file()
