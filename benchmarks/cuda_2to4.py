"""Dense vs 2:4 semi-structured sparse Linear on a CUDA GPU, side by side in one run.

For each weight shape (out x in) and number of input rows (tokens), at fp16 and bf16: median
latency of F.linear with the dense weight and with the same 2:4-masked weight converted by
``torch.sparse.to_sparse_semi_structured``, through cuSPARSELt and through CUTLASS (sm_8x only),
each checked against the dense output before timing. Two clocks: wall time per call (what a
model sees, host overhead included) and the GPU kernels' own time per call (torch.profiler), so
a host-side floor is told apart from kernel speed. NVIDIA's ideal for the matmul is 2x.

    python -m benchmarks.cuda_2to4 [--min-run-time 0.2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import warnings
from functools import partial
from math import nan

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark
from rich.console import Console
from rich.table import Table

from sparsebench.sparsity.patterns import NM

# (out, in): ViT-B/16 MLP, a square 4096 layer, LLaMA-7B's MLP up and down projections.
SHAPES = ((3072, 768), (4096, 4096), (11008, 4096), (4096, 11008))
TOKENS = (64, 512, 4096, 16384)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def median_ms(fn, min_run_time: float) -> float:
    # torch.utils.benchmark synchronises CUDA around each timed block.
    fn()
    return (
        benchmark.Timer(stmt="fn()", globals={"fn": fn})
        .blocked_autorange(min_run_time=min_run_time)
        .median
        * 1e3
    )


def kernel_ms(fn, calls: int = 20) -> float:
    """GPU time of the kernels ``fn`` launches, per call (CUPTI through torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / calls / 1e3


def sparse_weight(weight: torch.Tensor, cutlass: bool):
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = cutlass
    try:
        return to_sparse_semi_structured(weight)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: benchmarks.cuda_2to4 needs a CUDA GPU, and none is visible.")
    warnings.filterwarnings("ignore", message=".*semi-structured.*")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    table = Table(title=f"Linear y = x W^T, {name}, torch {torch.__version__} (median ms)")
    for col in (
        "dtype",
        "W (out x in)",
        "tokens",
        "dense",
        "dense kernel",
        "2:4 cuSPARSELt",
        "2:4 kernel",
        "wall x",
        "kernel x",
        "2:4 CUTLASS",
    ):
        table.add_column(col, justify="right")
    rows = []
    for dtype_name, dtype in DTYPES.items():
        for out_features, in_features in SHAPES:
            dense = torch.randn(out_features, in_features, device="cuda", dtype=dtype)
            dense = dense * NM(2, 4).mask(dense.abs())
            kernels = {}
            for backend, cutlass in (("cusparselt", False), ("cutlass", True)):
                try:
                    kernels[backend] = sparse_weight(dense, cutlass)
                except (RuntimeError, ValueError) as exc:  # backend missing in this build
                    kernels[backend] = None
                    print(f"{backend} unavailable: {str(exc).splitlines()[0]}")
            for tokens in TOKENS:
                x = torch.randn(tokens, in_features, device="cuda", dtype=dtype)
                expected = F.linear(x, dense)
                row = {
                    "dtype": dtype_name,
                    "out": out_features,
                    "in": in_features,
                    "tokens": tokens,
                }
                row["dense_ms"] = median_ms(partial(F.linear, x, dense), args.min_run_time)
                row["dense_kernel_ms"] = kernel_ms(partial(F.linear, x, dense))
                for backend, weight in kernels.items():
                    if weight is None:
                        row[f"{backend}_ms"] = float("nan")
                        continue
                    try:
                        got = F.linear(x, weight)
                    except RuntimeError as exc:  # e.g. CUTLASS 2:4 runs on sm_8x only
                        print(f"{backend} skipped: {str(exc).splitlines()[0]}")
                        kernels[backend], row[f"{backend}_ms"] = None, float("nan")
                        continue
                    if not torch.allclose(got.float(), expected.float(), rtol=2e-2, atol=0.5):
                        raise RuntimeError(f"{backend} output differs from dense at {row}")
                    row[f"{backend}_ms"] = median_ms(
                        partial(F.linear, x, weight), args.min_run_time
                    )
                    row[f"{backend}_kernel_ms"] = kernel_ms(partial(F.linear, x, weight))
                rows.append(row)
                table.add_row(
                    dtype_name,
                    f"{out_features}x{in_features}",
                    str(tokens),
                    f"{row['dense_ms']:.4f}",
                    f"{row['dense_kernel_ms']:.4f}",
                    f"{row['cusparselt_ms']:.4f}",
                    f"{row.get('cusparselt_kernel_ms', nan):.4f}",
                    f"{row['dense_ms'] / row['cusparselt_ms']:.2f}x",
                    f"{row['dense_kernel_ms'] / row.get('cusparselt_kernel_ms', nan):.2f}x",
                    f"{row['cutlass_ms']:.4f}" if row["cutlass_ms"] == row["cutlass_ms"] else "n/a",
                )
    Console(width=160).print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
