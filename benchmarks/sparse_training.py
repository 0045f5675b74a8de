"""Training steps with the sparse training kernels against dense kernels, side by side in one run.

A step is what training does per batch with hard masks: forward, backward, masked gradients,
the optimizer (SGD with momentum 0.9 and weight decay), masked weights zeroed. The dense arm is
today's default (``trainer.sparse_kernels=off``: dense kernels on masked weights); the sparse arm
installs the kernels (:mod:`sparsebench.hardware.training`) on the same masks. Both are timed
interleaved (:func:`sparsebench.hardware.timing.time_interleaved`, with its noise verdict), and
the ideal 1/(1-s) is shown beside the measured ratio.

    python -m benchmarks.sparse_training      # goal: 90% MLP step >= 2.5x dense

Rows: an MLP of three 4096x4096 layers at batch 64 and 256, and a transformer MLP block
(768 -> 3072 -> 768) on 256 tokens, at 80/90/95%. Convolutions have no sparse training kernel yet
(they train dense). SparseProp's package (``sparseprop`` 0.1.14, which builds from its source
distribution against this project's torch) is not timed beside these rows yet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import timm
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from sparsebench.hardware.timing import time_interleaved
from sparsebench.hardware.training import SparseKernel
from sparsebench.hardware.update import SparseUpdate
from sparsebench.sparsity.masks import MaskSet


def mlp(width: int, hidden: int, layers: int) -> nn.Sequential:
    widths = [width] + [hidden] * (layers - 1) + [width]
    parts: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        parts += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*parts[:-1])


def masked(model: nn.Module, sparsity: float) -> tuple[nn.Module, MaskSet]:
    """``model`` with every Linear and Conv2d masked at ``sparsity`` (the same masks for every
    arm: seeded)."""
    torch.manual_seed(0)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    masks = MaskSet(layers)
    for name, layer in layers.items():
        masks.set(name, torch.rand(layer.weight.shape) >= sparsity)
    return model, masks


def sgd(params) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)


def arm(kind: str, model: nn.Module, sparsity: float, batch: torch.Tensor):
    """One training step as a closure. ``dense``: today's default (trainer.sparse_kernels=off:
    dense kernels, masked gradients and weights zeroed around torch's SGD); ``ours``: the sparse
    kernels and the update at the nonzeros; ``sparseprop``: SparseProp's modules in place of
    the masked layers (their kept weights a compact Parameter, so SGD touches only those);
    ``lean dense``: no masks at all and torch's multi-tensor SGD, the fastest a dense step of
    the same FLOPs gets here (a floor for dense, not what masked training costs)."""
    model, masks = masked(model, sparsity)
    if kind == "lean dense":
        MaskSet.detach(model)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4, foreach=True
        )
        masks = None
    elif kind == "sparseprop":
        from sparseprop.modules import SparseConv2d, SparseLinear
        from sparseprop.utils import swap_module

        for name, layer in masks:
            swap = SparseLinear if isinstance(layer, nn.Linear) else SparseConv2d
            swap_module(model, name, swap.from_dense(layer))
        optimizer, masks = sgd(model.parameters()), None
    else:
        optimizer = sgd(model.parameters())
    if kind == "ours":
        installed = [SparseKernel(layer) for _, layer in masks]
        for kernel in installed:
            kernel.compact = True
        SparseUpdate(optimizer, installed)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(batch).square().mean().backward()
        if masks is not None:
            masks.mask_grads()
        optimizer.step()
        if masks is not None:
            masks.apply()

    return step


def sparseprop_missing(rows: list[str]) -> str | None:
    """Why SparseProp cannot run beside ours here (None: it can)."""
    try:
        import sparseprop  # noqa: F401
    except ImportError:
        return (
            "sparseprop is not installed (pip wheel --no-deps --no-build-isolation "
            "sparseprop==0.1.14 builds it against this torch; then pip install the wheel)"
        )
    return None


def unsupported_by_sparseprop(model: nn.Module) -> str | None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and (
            module.groups != 1 or module.kernel_size[0] != module.kernel_size[1]
        ):
            return "SparseProp's SparseConv2d takes square, ungrouped kernels"
    return None


ROWS = {
    "MLP 3x4096, batch 64": (lambda: mlp(4096, 4096, 3), (64, 4096)),
    "MLP 3x4096, batch 256": (lambda: mlp(4096, 4096, 3), (256, 4096)),
    "transformer MLP 768-3072, 256 tokens": (lambda: mlp(768, 3072, 2), (256, 768)),
    "resnet18 32x32, batch 64": (
        lambda: timm.create_model("resnet18", num_classes=10),
        (64, 3, 32, 32),
    ),
    "resnet18 224x224, batch 16": (
        lambda: timm.create_model("resnet18", num_classes=1000),
        (16, 3, 224, 224),
    ),
}
ARMS = ("dense", "ours", "sparseprop", "lean dense")


def steps_table(args) -> Table:
    missing = sparseprop_missing(args.rows)
    title = f"training step (forward, backward, SGD), {args.threads} threads"
    table = Table(title=title, caption=f"SparseProp: {missing}" if missing else None)
    columns = ("layers", "sparsity", "dense ms", "ours ms", "ours", "SparseProp ms", "SparseProp")
    for column in (*columns, "vs lean dense", "ideal", "noise"):
        table.add_column(column, justify="left" if column in ("layers", "noise") else "right")
    for label in args.rows:
        make, shape = ROWS[label]
        batch = torch.randn(*shape)
        skip = missing or unsupported_by_sparseprop(make())
        for sparsity in args.sparsities:
            fns = {
                k: arm(k, make(), sparsity, batch) for k in ARMS if k != "sparseprop" or not skip
            }
            timings, noise = time_interleaved(
                fns, args.threads, 2, args.min_run_time, 4 * args.min_run_time
            )
            ms = {k: t.p50 * 1e3 for k, t in timings.items()}
            sp = (f"{ms['sparseprop']:.1f}", f"{ms['dense'] / ms['sparseprop']:.2f}x")
            table.add_row(
                label,
                f"{sparsity:.0%}",
                f"{ms['dense']:.1f}",
                f"{ms['ours']:.1f}",
                f"{ms['dense'] / ms['ours']:.2f}x",
                *(sp if "sparseprop" in ms else ("-", skip if not missing else "-")),
                f"{ms['lean dense'] / ms['ours']:.2f}x",
                f"{1 / (1 - sparsity):.0f}x",
                "; ".join(noise.reasons) or f"ok (others used {noise.competing:.1f} cores)",
            )
    return table


def end_to_end(args) -> Table:
    """A RigL run (update every 100 steps, the dense gradient on those) trained with dense and
    with sparse kernels through the command line, alternated: its ``time/train_s``."""
    command = [sys.executable, "-m", "sparsebench", "model=mlp", "dataset=mnist1d"]
    command += ["model.hidden_dims=[4096,4096,4096]", "+method=rigl", "method.sparsity=0.9"]
    command += ["method.update_interval=100", f"trainer.max_epochs={args.e2e_epochs}"]
    command += ["logger=none", "trainer.enable_checkpointing=false"]
    times: dict[str, list[float]] = {"off": [], "on": []}
    accuracy: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.e2e_runs):
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                out = Path(folder) / f"{mode}{i}"
                extra = [f"trainer.sparse_kernels={mode}", f"paths.output_dir={out}"]
                subprocess.run(command + extra, check=True, capture_output=True)
                metrics = json.loads((out / "results.json").read_text())["metrics"]
                times[mode].append(metrics["time/train_s"])
                accuracy[mode].append(metrics["test/acc"])
    table = Table(title=f"RigL end to end: {' '.join(command[3:])}, {args.e2e_runs} runs each")
    for column in ("kernels", "time/train_s (median)", "runs", "test/acc", "speed-up"):
        table.add_column(column, justify="left" if column == "kernels" else "right")
    median = {k: statistics.median(v) for k, v in times.items()}
    for mode in ("off", "on"):
        table.add_row(
            mode,
            f"{median[mode]:.1f}",
            ", ".join(f"{t:.1f}" for t in times[mode]),
            ", ".join(f"{a:.3f}" for a in accuracy[mode]),
            f"{median['off'] / median[mode]:.2f}x",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--e2e-runs", type=int, default=2, help="RigL runs per arm (0: none)")
    parser.add_argument("--e2e-epochs", type=int, default=5)
    args = parser.parse_args()
    console = Console(width=220)
    if args.rows:
        console.print(steps_table(args))
    if args.e2e_runs:
        console.print(end_to_end(args))


if __name__ == "__main__":
    main()
