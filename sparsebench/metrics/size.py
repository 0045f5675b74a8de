"""Weight storage size in the formats sparse kernels read.

Per layer, for a weight viewed as a [rows, cols] matrix (convs: [out, in*kh*kw]), with b bytes
per value and 4-byte (int32) indices:
- ``dense``: rows*cols*b
- ``csr``: nnz*b values + nnz*4 column indices + (rows+1)*4 row pointers
- ``bitmap``: nnz*b values + one bit per position
- ``bcsr`` (bh x bw blocks): nonzero blocks*bh*bw*b + blocks*4 + (rows/bh+1)*4
- ``nm`` (N:M compressed, as cuSPARSELt stores 2:4): kept values*b + ceil(log2 M) bits of
  position metadata per kept value
Layers that are not pruned are stored dense.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.sparsity.patterns import as_matrix

FORMATS = ("dense", "csr", "bitmap", "bcsr", "nm")
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
INDEX_BYTES = 4


def layer_bytes(
    weight: torch.Tensor, fmt: str, value_bytes: int, block: tuple[int, int] = (1, 4), m: int = 4
) -> int:
    """Bytes to store one layer's weight in ``fmt``."""
    w = as_matrix(weight.detach())
    rows, cols = w.shape
    nnz = int(w.count_nonzero())
    if fmt == "dense":
        return rows * cols * value_bytes
    if fmt == "csr":
        return nnz * (value_bytes + INDEX_BYTES) + (rows + 1) * INDEX_BYTES
    if fmt == "bitmap":
        return nnz * value_bytes + math.ceil(rows * cols / 8)
    if fmt == "bcsr":
        bh, bw = block
        if rows % bh or cols % bw:
            raise ConfigError(
                f"block-CSR with {bh}x{bw} blocks does not tile a {rows}x{cols} weight."
            )
        blocks = int(
            w.reshape(rows // bh, bh, cols // bw, bw).abs().sum(dim=(1, 3)).count_nonzero()
        )
        return blocks * (bh * bw * value_bytes + INDEX_BYTES) + (rows // bh + 1) * INDEX_BYTES
    if fmt == "nm":
        kept = nnz  # an N:M layer stores exactly its kept values
        return kept * value_bytes + math.ceil(kept * math.ceil(math.log2(m)) / 8)
    raise ConfigError(f"unknown storage format '{fmt}'; available: {', '.join(FORMATS)}.")


def model_bytes(
    model: nn.Module, layers: dict[str, nn.Module], fmt: str, dtype: str = "fp32", **options
) -> dict[str, float]:
    """``size/dense_bytes`` (every parameter dense) and ``size/sparse_bytes`` (pruned layers in
    ``fmt``, everything else dense), at ``dtype``."""
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype '{dtype}'; available: {', '.join(DTYPE_BYTES)}.")
    b = DTYPE_BYTES[dtype]
    dense = sum(p.numel() for p in model.parameters()) * b
    pruned = {id(m.weight) for m in layers.values()}
    sparse = sum(p.numel() * b for p in model.parameters() if id(p) not in pruned)
    sparse += sum(layer_bytes(m.weight, fmt, b, **options) for m in layers.values())
    return {"size/dense_bytes": dense, "size/sparse_bytes": sparse}
