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


def arm(model: nn.Module, sparsity: float, batch: torch.Tensor, kernels: bool):
    """One training step of ``model`` (its Linears and Conv2ds masked at ``sparsity``) as a
    closure."""
    torch.manual_seed(0)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    masks = MaskSet(layers)
    for name, layer in layers.items():
        masks.set(name, torch.rand(layer.weight.shape) >= sparsity)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    if kernels:
        installed = [SparseKernel(layer) for layer in layers.values()]
        for kernel in installed:
            kernel.compact = True
        SparseUpdate(optimizer, installed)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(batch).square().mean().backward()
        masks.mask_grads()
        optimizer.step()
        masks.apply()

    return step


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    table = Table(title=f"training step, sparse kernels vs dense ({args.threads} threads)")
    for column in ("layers", "sparsity", "dense ms", "sparse ms", "speed-up", "ideal", "noise"):
        table.add_column(column, justify="left" if column in ("layers", "noise") else "right")
    for label in args.rows:
        make, shape = ROWS[label]
        batch = torch.randn(*shape)
        for sparsity in args.sparsities:
            fns = {
                "dense": arm(make(), sparsity, batch, kernels=False),
                "sparse": arm(make(), sparsity, batch, kernels=True),
            }
            timings, noise = time_interleaved(
                fns, args.threads, 2, args.min_run_time, 4 * args.min_run_time
            )
            dense, sparse = timings["dense"].p50, timings["sparse"].p50
            table.add_row(
                label,
                f"{sparsity:.0%}",
                f"{dense * 1e3:.1f}",
                f"{sparse * 1e3:.1f}",
                f"{dense / sparse:.2f}x",
                f"{1 / (1 - sparsity):.0f}x",
                "; ".join(noise.reasons) or f"ok (others used {noise.competing:.1f} cores)",
            )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
