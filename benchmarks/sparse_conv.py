"""Sparse CNNs and a wide MLP on the CPU: measured speed-up of `cpu_sparse` next to the ideal.

Side by side in one run, on this machine (threads: its physical cores, or --threads):

1. Layers: representative convolutions of ResNet-18 and MobileNetV2 at 90% sparsity (random
   unstructured, and the 4x1 group pattern ``block4x1``), batch 1: median latency of the dense
   convolution (oneDNN, NCHW and channels-last), torch.sparse CSR on the unfolded input (MKL),
   and sparsebench's direct kernel with 1 and 4 output channels per group, timed interleaved.
2. Networks: timm's resnet18 and mobilenetv2_100 at 224x224, batch 1, every prunable layer
   (stem and head stay dense, as the methods leave them) pruned by magnitude at 0.5-0.95, in
   the unstructured and the group pattern: the whole network's ``speedup/measured`` on
   ``cpu_sparse`` (dense and sparse timed interleaved, the p50's 95% interval), the ideal
   (dense FLOPs / sparse FLOPs), and how many layers each kernel won. At 90% the same network
   with the MKL kernels only (``hardware.kernels=[csr,bsr]``) shows what torch.sparse alone gives.
3. The README's MLP (mnist1d, hidden 4096x4096, 90% random sparsity) at batch 64, with the
   MKL kernels only and with the direct kernel.

    python -m benchmarks.sparse_conv [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import warnings

import psutil
import timm
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from sparsebench.hardware.cpu import CPUSparseTarget, int32_indices
from sparsebench.hardware.direct import DirectSparse
from sparsebench.hardware.timing import time_interleaved
from sparsebench.metrics.flops import flops_per_sample
from sparsebench.models.small import MLP
from sparsebench.sparsity.patterns import Block, Pattern, Unstructured
from sparsebench.sparsity.prunable import prunable_layers

GROUP = Block((4, 1))
# (name, in, out, size, kernel, stride, groups): ResNet-18's 3x3 convs of each stage and a
# downsampling one; MobileNetV2's widest 1x1 expansion and projection.
LAYERS = [
    ("resnet18 layer1 3x3", 64, 64, 56, 3, 1),
    ("resnet18 layer2 3x3", 128, 128, 28, 3, 1),
    ("resnet18 layer3 3x3", 256, 256, 14, 3, 1),
    ("resnet18 layer4 3x3", 512, 512, 7, 3, 1),
    ("resnet18 layer2 3x3 s2", 64, 128, 56, 3, 2),
    ("mobilenetv2 1x1 expand", 24, 144, 56, 1, 1),
    ("mobilenetv2 1x1 project", 144, 24, 56, 1, 1),
    ("mobilenetv2 1x1 960->160", 960, 160, 7, 1, 1),
]


def prune(
    model: nn.Module, layers: dict[str, nn.Module], pattern: Pattern, sparsity: float
) -> None:
    """Magnitude pruning of each layer at ``sparsity`` in ``pattern`` (uniform per layer)."""
    with torch.no_grad():
        for module in layers.values():
            module.weight.mul_(pattern.mask(module.weight.abs(), 1 - sparsity))


def alternatives(conv: nn.Conv2d, x: torch.Tensor) -> dict:
    """The ways to run ``conv`` on ``x``, by name (the columns of the layer table)."""
    k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    channels_last = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    x_cl = x.to(memory_format=torch.channels_last)
    weight = int32_indices(conv.weight.detach().reshape(conv.out_channels, -1).to_sparse_csr())
    direct, group = DirectSparse(conv, rows=1), DirectSparse(conv, rows=4)
    return {
        "dense": lambda: F.conv2d(x, conv.weight, None, stride, pad),
        "dense CL": lambda: channels_last(x_cl),
        "unfold+CSR": lambda: torch.sparse.mm(
            weight, F.unfold(x, k, padding=pad, stride=stride)[0]
        ),
        "direct": lambda: direct(x),
        "direct4x1": lambda: group(x),
    }


def layer_table(threads: int, quick: bool) -> Table:
    table = Table(
        title=f"Layers at 90% sparsity, batch 1, {threads} threads (median ms; speed-up over dense NCHW)"
    )
    for col in ("layer", "pattern", "dense", "dense CL", "unfold+CSR", "direct", "direct4x1"):
        table.add_column(col, justify="right")
    for name, cin, cout, size, k, stride in LAYERS[:3] if quick else LAYERS:
        for pattern in (Unstructured(), GROUP):
            torch.manual_seed(0)
            conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False).eval()
            prune(conv, {"": conv}, pattern, 0.9)
            x = torch.randn(1, cin, size, size)
            fns = alternatives(conv, x)
            with torch.inference_mode():
                reference = conv(x)
                for key in ("direct", "direct4x1"):
                    assert torch.allclose(fns[key](), reference, atol=1e-4), (name, key)
                timings, _ = time_interleaved(fns, threads, 3, 0.3, 3.0)
            dense = timings["dense"].p50
            table.add_row(
                name,
                pattern.label,
                f"{dense * 1e3:.3f}",
                *[
                    f"{timings[key].p50 * 1e3:.3f} ({dense / timings[key].p50:.2f}x)"
                    for key in list(fns)[1:]
                ],
            )
    return table


def network_row(
    table: Table,
    model: nn.Module,
    label: str,
    pattern: Pattern,
    sparsity: float,
    target: CPUSparseTarget,
    x: torch.Tensor,
) -> float:
    layers = prunable_layers(model)
    prune(model, layers, pattern, sparsity)
    flops = flops_per_sample(model, x, layers)
    measured = target.benchmark(model, x, layers, pattern)
    m = measured.metrics
    won = collections.Counter(
        k if not k.startswith("dense") else "dense" for k in measured.kernels.values()
    )
    table.add_row(
        label,
        pattern.label,
        f"{sparsity:.2f}",
        f"{m['latency/dense_p50_ms']:.2f}",
        f"{m['latency/p50_ms']:.2f}",
        f"{m['speedup/measured']:.2f}x",
        f"[{m['latency/dense_p50_ms'] / m['latency/p50_high_ms']:.2f}, {m['latency/dense_p50_ms'] / m['latency/p50_low_ms']:.2f}]",
        f"{flops['flops/dense'] / flops['flops/sparse']:.2f}x",
        " ".join(f"{k}:{v}" for k, v in sorted(won.items())),
        measured.tags["latency/noisy"],
    )
    return m["speedup/measured"]


COLUMNS = (
    "network",
    "pattern",
    "sparsity",
    "dense ms",
    "sparse ms",
    "speed-up",
    "interval",
    "ideal",
    "kernels (layers won)",
    "noisy",
)


def network_table(threads: int, quick: bool) -> tuple[Table, dict]:
    table = Table(title=f"Whole networks on cpu_sparse, 224x224, batch 1, {threads} threads")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    goals = {}
    x = torch.randn(1, 3, 224, 224)
    sparsities = (0.9,) if quick else (0.5, 0.7, 0.8, 0.9, 0.95)
    for arch in ("resnet18", "mobilenetv2_100"):
        for pattern in (Unstructured(), GROUP):
            for sparsity in sparsities:
                torch.manual_seed(0)
                model = timm.create_model(arch).eval()
                target = CPUSparseTarget(name="cpu_sparse", threads=threads, batch_size=1)
                goals[(arch, pattern.label, sparsity)] = network_row(
                    table, model, arch, pattern, sparsity, target, x
                )
            if pattern is GROUP:
                continue
            torch.manual_seed(0)
            model = timm.create_model(arch).eval()
            mkl = CPUSparseTarget(
                name="cpu_sparse", threads=threads, batch_size=1, kernels=["csr", "bsr"]
            )
            network_row(table, model, f"{arch} (MKL only)", pattern, 0.9, mkl, x)
    return table, goals


def mlp_table(threads: int) -> tuple[Table, dict]:
    table = Table(
        title=f"The README's MLP (40 -> 4096 -> 4096 -> 10), 90% random, batch 64, {threads} threads"
    )
    for col in COLUMNS:
        table.add_column(col, justify="right")
    goals = {}
    x = torch.randn(1, 40)
    for kernels in (["csr", "bsr"], ["csr", "bsr", "direct"]):
        torch.manual_seed(0)
        model = MLP(40, 10, hidden_dims=[4096, 4096]).eval()
        target = CPUSparseTarget(name="cpu_sparse", threads=threads, batch_size=64, kernels=kernels)
        goals[tuple(kernels)] = network_row(
            table, model, f"mlp [{','.join(kernels)}]", Unstructured(), 0.9, target, x
        )
    return table, goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    parser.add_argument("--quick", action="store_true", help="fewer layers and only 90%% sparsity")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*Sparse (CSR|BSR) tensor support is in beta.*")
    warnings.filterwarnings("ignore", message=".*Sparse invariant checks are implicitly disabled.*")
    console = Console(width=160)
    console.print(
        f"CPU: {psutil.cpu_count(logical=False)} cores, load average {os.getloadavg()[0]:.2f} at start, torch {torch.__version__}"
    )
    console.print(layer_table(args.threads, args.quick))
    networks, goals = network_table(args.threads, args.quick)
    console.print(networks)
    mlp, mlp_goals = mlp_table(args.threads)
    console.print(mlp)
    checks = [
        (
            "mobilenetv2_100 unstructured at 90% >= 1.5x",
            goals[("mobilenetv2_100", "unstructured", 0.9)],
            1.5,
        ),
        ("resnet18 unstructured at 90% >= 1.5x", goals[("resnet18", "unstructured", 0.9)], 1.5),
        ("resnet18 block4x1 at 90% >= 2x", goals[("resnet18", "block4x1", 0.9)], 2.0),
        ("MLP 4096 at batch 64 >= 3x", mlp_goals[("csr", "bsr", "direct")], 3.0),
    ]
    for text, value, goal in checks:
        console.print(f"goal {text}: {value:.2f}x {'met' if value >= goal else 'NOT met'}")
    console.print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
