"""Harness overhead: sparsebench's training step against a plain PyTorch loop, side by side.

Same model (resnet18 from the default config), same data (digits at 32x32), same batch size,
same optimizer and schedule, same thread count. Each side runs ``--steps`` steps after
``--warmup`` steps, alternating over ``--rounds`` rounds so drift hits both; the ratio is of the
median step times. Then it times ``python -m sparsebench`` from command start to the first
training step (``time/startup_s`` in results.json).

    python benchmarks/overhead.py            # prints the table; target: ratio <= 1.10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import open_dict
from rich.console import Console
from rich.table import Table

from sparsebench.config.compose import compose
from sparsebench.models import build_model
from sparsebench.record.logs import quiet_lightning
from sparsebench.record.recorder import RunRecorder
from sparsebench.runners.train import run as train_run  # noqa: F401  (same imports as the CLI)
from sparsebench.training.fit import build_trainer
from sparsebench.training.parts import build_datamodule, build_module
from sparsebench.training.progress import RunProgress


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter())


def harness_steps(cfg, steps: int, out: Path) -> list[float]:
    """Step times of the real harness: Lightning, our module, callbacks, the run's record
    (results.json and MLflow)."""
    L.seed_everything(0, verbose=False)
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_train_batches = steps + 1
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.enable_progress_bar = True
        cfg.paths.output_dir = str(out)
    datamodule = build_datamodule(cfg)
    clock = StepClock()
    record = RunRecorder(cfg, out)
    trainer = build_trainer(cfg, out, [RunProgress(record), clock])
    trainer.fit(build_module(cfg, build_model(cfg.model)), datamodule=datamodule)
    record.close()  # a partial run by design (no test, no latency): recorded as failed
    return [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)]


def plain_steps(cfg, steps: int) -> list[float]:
    """Step times of a hand-written loop doing the same work."""
    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    model = build_model(cfg.model).train()
    module = build_module(cfg, model)
    optimizer = module.optimizer_factory(model.parameters())
    total = steps + 1
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    stamps = []
    for i, (x, y) in enumerate(datamodule.train_dataloader()):
        if i > steps:
            break
        stamps.append(time.perf_counter())
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        _ = float(loss.detach())  # the harness logs the loss every step
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def startup_seconds(workdir: Path) -> float:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sparsebench",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "hardware.min_run_time=0.01",  # a complete (ok) run, latency barely timed
            "hardware.warmup=1",
            "print_summary=false",
        ],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    (path,) = workdir.glob("outputs/**/results.json")
    return json.loads(path.read_text())["metrics"]["time/startup_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    quiet_lightning()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cfg = compose([f"logger.tracking_uri=sqlite:///{tmp}/mlflow.db"])
        harness, plain = [], []
        for r in range(args.rounds):
            harness += harness_steps(cfg.copy(), args.steps, tmp_path / f"h{r}")[args.warmup :]
            plain += plain_steps(cfg.copy(), args.steps)[args.warmup :]
        startup = startup_seconds(tmp_path)
    h, p = statistics.median(harness), statistics.median(plain)
    table = Table(
        title=f"per-step time, resnet18 on digits, batch {cfg.dataset.batch_size}, "
        f"{torch.get_num_threads()} threads, {len(harness)} steps each"
    )
    for col in ("", "median ms", "mean ms"):
        table.add_column(col, justify="right")
    table.add_row("plain PyTorch loop", f"{p * 1e3:.2f}", f"{statistics.mean(plain) * 1e3:.2f}")
    table.add_row(
        "sparsebench (Lightning)", f"{h * 1e3:.2f}", f"{statistics.mean(harness) * 1e3:.2f}"
    )
    table.add_row(
        "ratio (target <= 1.10)",
        f"{h / p:.3f}",
        f"{statistics.mean(harness) / statistics.mean(plain):.3f}",
    )
    console = Console()
    console.print(table)
    console.print(f"python -m sparsebench: command start to first training step: {startup:.2f} s")


if __name__ == "__main__":
    main()
