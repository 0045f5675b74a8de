"""Dense vs CSR vs BSR vs the direct kernel on one Linear layer on the CPU, side by side.

For a 4096x4096 weight with random unstructured sparsity s (and, for BSR, 16x16-block sparsity
s), batch sizes 1 and 64: median latency of F.linear (dense), torch.sparse.mm with CSR and with
BSR (MKL) and sparsebench's direct kernel (on the CSR weights), timed interleaved; the measured
speed-ups next to the ideal 1/(1-s), and the break-even sparsity per batch size (the lowest s at
which CSR beats dense, interpolated between measured points).

    python -m benchmarks.sparse_kernels [--features 4096] [--threads N]
"""

from __future__ import annotations

import argparse
import warnings

import psutil
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from sparsebench.hardware.direct import DirectSparse
from sparsebench.hardware.timing import time_interleaved
from sparsebench.sparsity.patterns import Block, Unstructured

SPARSITIES = (0.5, 0.7, 0.9, 0.95, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    parser.add_argument("--block", type=int, default=16)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*Sparse (CSR|BSR) tensor support is in beta.*")
    torch.manual_seed(0)
    n = args.features
    dense_weight = torch.randn(n, n)
    table = Table(
        title=f"Linear {n}x{n}, CPU, {args.threads} threads, torch {torch.__version__} (median ms)"
    )
    for col in (
        "batch",
        "sparsity",
        "dense",
        "CSR",
        f"BSR {args.block}x{args.block}",
        "direct",
        "CSR speed-up",
        "BSR speed-up",
        "direct speed-up",
        "ideal 1/(1-s)",
    ):
        table.add_column(col, justify="right")
    break_even = {}
    for batch in (1, 64):
        x = torch.randn(batch, n)
        xt = x.t().contiguous()
        previous = None
        for s in SPARSITIES:
            unstructured = dense_weight * Unstructured().mask(torch.rand(n, n), 1 - s)
            blocked = dense_weight * Block((args.block, args.block)).mask(torch.rand(n, n), 1 - s)
            csr, bsr = unstructured.to_sparse_csr(), blocked.to_sparse_bsr((args.block, args.block))
            linear = nn.Linear(n, n, bias=False)
            linear.weight.data = unstructured
            direct = DirectSparse(linear)
            with torch.inference_mode():
                assert torch.allclose(
                    torch.sparse.mm(csr, xt).t(), F.linear(x, unstructured), atol=1e-3
                )
                assert torch.allclose(torch.sparse.mm(bsr, xt).t(), F.linear(x, blocked), atol=1e-3)
                assert torch.allclose(direct(x), F.linear(x, unstructured), atol=1e-3)
                fns = {
                    "dense": lambda x=x: F.linear(x, dense_weight),
                    "csr": lambda csr=csr, xt=xt: torch.sparse.mm(csr, xt),
                    "bsr": lambda bsr=bsr, xt=xt: torch.sparse.mm(bsr, xt),
                    "direct": lambda direct=direct, x=x: direct(x),
                }
                timings, _ = time_interleaved(fns, args.threads, 3, 0.3, 3.0)
            ms = {k: t.p50 * 1e3 for k, t in timings.items()}
            table.add_row(
                str(batch),
                f"{s:.2f}",
                *[f"{ms[k]:.3f}" for k in fns],
                *[f"{ms['dense'] / ms[k]:.2f}x" for k in ("csr", "bsr", "direct")],
                f"{1 / (1 - s):.0f}x",
            )
            ratio = ms["dense"] / ms["csr"]
            if batch not in break_even and ratio >= 1:
                if previous is None:
                    break_even[batch] = f"<= {s}"
                else:  # linear interpolation of the speed-up between the two sparsities
                    s0, r0 = previous
                    break_even[batch] = f"~{s0 + (1 - r0) * (s - s0) / (ratio - r0):.2f}"
            previous = (s, ratio)
        break_even.setdefault(batch, f"> {SPARSITIES[-1]}")
    console = Console(width=130)
    console.print(table)
    for batch, value in break_even.items():
        console.print(f"break-even sparsity for CSR at batch {batch}: {value}")


if __name__ == "__main__":
    main()
