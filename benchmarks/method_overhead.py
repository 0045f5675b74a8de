"""Per-step training time of sparse methods against dense, side by side in one run.

resnet18 on digits (32x32), batch 64, CPU: dense training, static sparse training (``random``,
mask applied after every step and gradients masked before it) and RigL with its mask updates
(every ``--update-interval`` steps). Each configuration runs ``--steps`` steps per round,
alternating over ``--rounds`` rounds; ratios are of mean step times, so RigL's update steps
count in full.

    python benchmarks/method_overhead.py     # targets: static <= 1.10, RigL <= 1.15
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.overhead import StepClock
from sparsebench.config.compose import compose
from sparsebench.models import build_model
from sparsebench.record.logs import quiet_lightning
from sparsebench.training.fit import build_trainer, sparsity_callbacks
from sparsebench.training.parts import build_datamodule, build_method, build_module


def step_times(overrides: list[str], steps: int, out: Path) -> list[float]:
    cfg = compose(
        [
            "logger=none",
            "trainer.limit_val_batches=0",
            "trainer.enable_checkpointing=false",
            "trainer.enable_progress_bar=false",
            *overrides,
        ]
    )
    torch.manual_seed(0)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    cfg.trainer.max_epochs = math.ceil((steps + 1) / len(datamodule.train_dataloader()))
    method = build_method(cfg)
    clock = StepClock()
    callbacks = [*sparsity_callbacks(method), clock]
    trainer = build_trainer(cfg, out, callbacks)
    trainer.fit(build_module(cfg, build_model(cfg.model)), datamodule=datamodule)
    # Step-to-step intervals within each epoch (the epoch boundary holds no extra work here).
    return [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)][:steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--update-interval", type=int, default=25)
    args = parser.parse_args()
    quiet_lightning()
    configs = {
        "dense": [],
        "static sparse (random, ERK 90%)": ["+method=random", "method.sparsity=0.9"],
        f"RigL 90%, dT={args.update_interval}": [
            "+method=rigl",
            "method.sparsity=0.9",
            f"method.update_interval={args.update_interval}",
            "method.end=1.0",
        ],
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, overrides) in enumerate(configs.items()):
                times[name] += step_times(overrides, args.steps, Path(tmp) / f"{r}-{i}")[2:]
    dense = statistics.mean(times["dense"])
    table = Table(
        title=f"resnet18 on digits, batch 64, {torch.get_num_threads()} threads, "
        f"{len(times['dense'])} steps each"
    )
    for col in ("", "mean ms", "median ms", "ratio to dense (mean)"):
        table.add_column(col, justify="right")
    for name, values in times.items():
        mean = statistics.mean(values)
        table.add_row(
            name,
            f"{mean * 1e3:.2f}",
            f"{statistics.median(values) * 1e3:.2f}",
            f"{mean / dense:.3f}",
        )
    Console().print(table)
    Console().print("targets: static sparse <= 1.10, RigL <= 1.15 (mean step time over dense)")


if __name__ == "__main__":
    main()
