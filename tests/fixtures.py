"""What the tests share: the one way to compose a test run (through sparsebench.config.compose),
fixtures (a fast config, a fresh PostgreSQL database, a cache folder per test), processes on the
command line, and callbacks the tests inject through ``trainer.callbacks`` (also into DDP child
processes and subprocesses, as ``tests.fixtures.NAME``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from omegaconf import DictConfig, open_dict

from sparsebench.config.compose import compose, register
from sparsebench.sparsity.masks import MASK
from sparsebench.training.fit import fit, sparsity_callbacks
from sparsebench.training.parts import (
    build_datamodule,
    build_method,
    build_module,
    build_run_model,
    build_transform,
)

REPO = Path(__file__).resolve().parent.parent

# Two xdist workers share 2 cores: one thread each keeps them from fighting.
torch.set_num_threads(1)
# The direct sparse kernel is built once per machine, not once per test's own cache folder
# (own_cache below); run_cli's processes inherit the setting.
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR",
    str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch_extensions"),
)
register()


def compose_config(
    overrides: list[str] | None = None, output_dir: Path | None = None
) -> DictConfig:
    cfg = compose(list(overrides or []))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def search_in_process(args: list[str], cwd: Path, monkeypatch) -> tuple[DictConfig, Path]:
    """The config and a fresh output folder of ``python -m sparsebench.search ARGS`` run in
    ``cwd``, for tests that run the worker (or the baseline) in-process; the CLI and its
    processes are tested in tests/search/test_search_cluster.py."""
    monkeypatch.chdir(cwd)
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    cfg = compose(args, "search")
    runs = cwd / "outputs" / "search" / Path(str(cfg.sweep)).stem
    output_dir = runs / f"run{len(list(runs.glob('run*')))}" / "worker0"
    output_dir.mkdir(parents=True)
    return cfg, output_dir


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch) -> None:
    """Each test its own cache folder (the leaderboard caches a tracking server's runs there;
    servers of different tests reuse addresses)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real config with ``debug=fast``, its outputs and MLflow store under tmp_path."""

    def make(*overrides: str, fast: bool = True) -> DictConfig:
        base = ["debug=fast", "hardware.threads=1"] if fast else []
        base.append(f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
        return compose_config([*base, *overrides], output_dir=tmp_path / "run")

    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(
    args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python -m sparsebench ARGS`` in ``cwd``; never reads the user's MLflow settings."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sparsebench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def wait_until_healthy(base_url: str, server: subprocess.Popen, timeout: float) -> None:
    """Poll ``base_url/health`` until it answers; fail if the process exits or time runs out."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{base_url}/health", timeout=2).close()
            return
        except OSError:
            assert server.poll() is None, f"the server behind {base_url} exited"
            assert time.time() < deadline, f"{base_url} did not answer within {timeout:.0f} s"
            time.sleep(0.5)


PG = "postgresql://postgres@127.0.0.1:5432"  # every machine of this project runs it (trust auth)


def _psql(sql: str) -> None:
    import psycopg2

    connection = psycopg2.connect(f"{PG}/postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql)
    connection.close()


@pytest.fixture
def pg_database():
    """A fresh database on the local PostgreSQL (``postgresql://.../NAME``); dropped after."""
    import uuid

    try:
        import psycopg2

        psycopg2.connect(f"{PG}/postgres").close()
    except Exception as exc:  # pragma: no cover - the project's machines all run PostgreSQL
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable ({exc})")
    database = f"sparsebench_{uuid.uuid4().hex[:10]}"
    _psql(f"CREATE DATABASE {database}")
    try:
        yield f"{PG}/{database}"
    finally:
        _psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


# Callbacks injected through trainer.callbacks


def _masks(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    return {
        name: getattr(m, MASK).clone()
        for name, m in pl_module.model.named_modules()
        if hasattr(m, MASK)
    }


class DumpMasks(L.Callback):
    """Saves each rank's final masks and how many mask entries changed during training."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = _masks(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        final = _masks(pl_module)
        changed = sum(int((final[n] != self.initial[n]).sum()) for n in final)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"masks": final, "updates": changed}, self.dirpath / f"rank{trainer.global_rank}.pt"
        )


class Pause(L.Callback):
    """Holds a run at one point so that a test can disturb the real process there.

    At ``hook`` (``train_batch_end`` of batch ``batch`` in ``epoch``, ``train_epoch_start`` of
    ``epoch``, or ``test_end``) it writes its pid to ``marker``, then waits until the file
    ``go`` exists (at most ``wait_s`` seconds) or the test kills it. ``fsize``: instead of
    waiting, limit the size of every file the process writes from then on (RLIMIT_FSIZE, as a
    full disk would; SIGXFSZ ignored so that writes fail with EFBIG instead of killing it).
    """

    def __init__(
        self,
        marker: str,
        hook: str = "train_batch_end",
        epoch: int = 1,
        batch: int = 1,
        go: str | None = None,
        wait_s: float = 120.0,
        fsize: int | None = None,
    ) -> None:
        self.marker, self.hook, self.epoch, self.batch = Path(marker), hook, epoch, batch
        self.go, self.wait_s, self.fsize = go and Path(go), wait_s, fsize
        self.done = False

    def _here(self, hook: str, trainer, batch_idx: int | None = None) -> None:
        if self.done or hook != self.hook:
            return
        if hook != "test_end" and trainer.current_epoch != self.epoch:
            return
        if batch_idx is not None and batch_idx != self.batch:
            return
        self.done = True
        import os
        import time

        if self.fsize is not None:
            import resource
            import signal

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.fsize, self.fsize))
        self.marker.write_text(str(os.getpid()))
        if self.fsize is not None:
            return
        deadline = time.time() + self.wait_s
        while time.time() < deadline and not (self.go and self.go.exists()):
            time.sleep(0.05)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._here("train_batch_end", trainer, batch_idx)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._here("train_epoch_start", trainer)

    def on_test_end(self, trainer, pl_module) -> None:
        self._here("test_end", trainer)


# Fitting a method in-process


def fit_method(
    cfg, out: Path, ckpt: str | None = None, max_epochs: int = 2, extra: list | None = None
):
    """Fit ``cfg``'s method as the runner builds it (datamodule, method, transformation, model,
    module, the sparsity callbacks); returns (model, method, trainer, datamodule, transform)."""
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg)
    method = build_method(cfg)
    transform = build_transform(cfg, method)
    model = build_run_model(cfg, datamodule, method, transform)  # as the runner does
    cfg.trainer.max_epochs = max_epochs
    module = build_module(cfg, model)
    callbacks = [*sparsity_callbacks(method, cfg.trainer.sparse_kernels), *(extra or [])]
    trainer = fit(module, datamodule, method, cfg, out, callbacks, ckpt)
    return model, method, trainer, datamodule, transform


# Search studies
FAST = ["model=mlp", "dataset=digits", "debug=fast", "model.hidden_dims=[64,64]"]


def write_sweep(folder: Path, **fields) -> Path:
    study = {
        "overrides": [*FAST, "+method=random"],
        "space": {"method.sparsity": {"type": "float", "low": 0.3, "high": 0.95}},
        "objectives": [{"metric": "val/acc", "direction": "maximize"}],
        "sampler": {"name": "random", "seed": 0},
        "n_trials": 3,
        **fields,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def search(args: list[str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "sparsebench.search", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def toy_model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 12),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 12),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 3),
    )
