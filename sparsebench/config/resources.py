"""Where the shipped configs are: conf/ (the Hydra config tree) and sweeps/ (studies, grids and
claims), installed as the packages ``sparsebench.conf`` and ``sparsebench.sweeps`` (pyproject's
``package-dir`` maps the repository's top-level folders onto them, in a wheel and in an editable
install alike)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

CONF_DIR = Path(str(importlib.resources.files("sparsebench.conf")))
"""The Hydra config tree: conf/ at the repository top level (docs/architecture.md)."""
SWEEPS_DIR = Path(str(importlib.resources.files("sparsebench.sweeps")))
"""Sweep definitions; on Hydra's search path through hydra_plugins/sparsebench_searchpath."""
CLAIMS_DIR = SWEEPS_DIR / "claims"
"""The claim files of the reproduction suite (``claim=NAME``)."""


def available_sweeps() -> list[str]:
    """The studies shipped in sweeps/ (``sweep=NAME``)."""
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


CHOICE_GROUPS = (
    "model",
    "dataset",
    "method",
    "transform",
    "hardware",
    "trainer",
    "logger",
    "paths",
    "experiment",
    "debug",
)


OPTIONAL_GROUPS = ("method", "transform")
"""Groups the defaults list declares with a null default: ``method=rigl`` chooses one."""
