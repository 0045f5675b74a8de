"""The wheel is the product: built, installed into a fresh virtual environment, it composes and
runs ``python -m sparsebench`` from an empty folder with the configs it ships."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.fixtures import REPO


@pytest.mark.slow
def test_the_wheel_runs_from_an_empty_folder(tmp_path: Path) -> None:
    source = tmp_path / "source"  # setuptools writes build/ beside the sources: not in the checkout
    for part in (
        "sparsebench",
        "runners",
        "conf",
        "sweeps",
        "hydra_plugins",
        "pyproject.toml",
        "README.md",
    ):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        copy(REPO / part, source / part)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("sparsebench-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for shipped in (
        "sparsebench/runners/train.py",
        "sparsebench/conf/config.yaml",
        "sparsebench/conf/method/rigl.yaml",
        "sparsebench/sweeps/tpe_rigl.yaml",
        "sparsebench/hardware/kernels/sparse_conv.cpp",
    ):
        assert shipped in names, shipped
    fresh = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=300
    )
    python = fresh / "bin" / "python"
    # --ignore-installed: pip would otherwise uninstall this environment's sparsebench first.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--prefix",
            str(fresh),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    # The dependencies: this environment's site-packages, added as a plain path (its .pth files,
    # among them the editable install of the checkout, are not processed there).
    (own,) = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    Path(own, "dependencies.pth").write_text(site.getsitepackages()[0] + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    where = subprocess.run(
        [str(python), "-c", "import sparsebench.config.resources as c; print(c.CONF_DIR)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(fresh)), where.stdout  # the wheel's own configs
    proc = subprocess.run(
        [str(python), "-m", "sparsebench", "debug=fast", "hardware.threads=1"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = empty.glob("outputs/runs/*/*/results.json")
    assert json.loads(results.read_text())["status"] == "ok"
    assert (empty / "mlflow.db").is_file()


def test_nothing_is_importable_under_two_names() -> None:
    """No links in the tree, and pyproject's package list is every package folder: the
    library's own, and runners/, conf/, sweeps/ mapped into it (one name each)."""
    links = [
        p
        for p in REPO.rglob("*")
        if p.is_symlink() and ".venv" not in p.parts and ".git" not in p.parts
    ]
    assert not links, links
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = setuptools["package-dir"]
    assert mapped == {
        "sparsebench.runners": "runners",
        "sparsebench.conf": "conf",
        "sparsebench.sweeps": "sweeps",
    }
    folders = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "sparsebench").rglob("__init__.py")
    }
    folders |= {
        f"hydra_plugins.{p.parent.name}" for p in (REPO / "hydra_plugins").glob("*/__init__.py")
    }
    assert set(setuptools["packages"]) == folders | set(mapped)
    import sparsebench.runners.train as train

    assert Path(train.__file__).resolve() == REPO / "runners" / "train.py"
