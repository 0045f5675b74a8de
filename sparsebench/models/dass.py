"""DASS's search space: DARTS cells whose mixed edges include parametric sparse operations.

Mousavi et al., "DASS: Differentiable Architecture Search for Sparse neural networks": a DARTS
search space (Liu et al., ICLR 2019) extended with SparseConv and SparseLinear operations. Each
sparse operation keeps a fixed fraction of its weights, chosen by learnable per-weight scores
(top-k of |score| with a straight-through gradient, as in Ramanujan et al. 2020's edge-popup;
docs/methods.md notes that DASS's exact scoring is not published in detail; this is one reading).

A network has a dense stem, ``cells`` cells (reduction cells at 1/3 and 2/3 of the depth),
``nodes`` intermediate nodes per cell, each the sum of edges from the two cell inputs and the
earlier nodes, and a classifier that is itself a mixed choice of a dense and sparse Linears.
``SearchNetwork`` holds every operation on every edge, weighted by softmax(alpha);
``DerivedNetwork`` holds the discretised genotype (two edges per node, one operation each).
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.models.dass_ops import (
    HEADS,
    OPS,
    FactorizedReduce,
    ReLUConvBN,
    SparseLinear,
    make_op,
    op_cost,
)


def _edges(nodes: int) -> list[tuple[int, int]]:
    """(node, input) pairs in order: node j takes the 2 cell inputs and nodes before it."""
    return [(j, i) for j in range(nodes) for i in range(2 + j)]


class Cell(nn.Module):
    def __init__(
        self,
        nodes: int,
        c_pp: int,
        c_p: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        genotype: list[tuple[str, int]] | None,
    ) -> None:
        super().__init__()
        self.nodes = nodes
        self.reduction = reduction
        self.pre0 = (
            nn.Sequential(ReLUConvBN(c_pp, channels), FactorizedReduce(channels))
            if reduction_prev
            else ReLUConvBN(c_pp, channels)
        )
        self.pre1 = ReLUConvBN(c_p, channels)
        self.genotype = genotype
        self.edges = nn.ModuleDict()
        for j, i in _edges(nodes):
            stride = 2 if reduction and i < 2 else 1
            if genotype is None:  # search: every operation on every edge
                self.edges[f"{j}_{i}"] = nn.ModuleList(
                    make_op(name, channels, stride, sparse=True) for name in OPS
                )
            else:
                chosen = [op for op, src in genotype[2 * j : 2 * j + 2] if src == i]
                for k, op in enumerate(chosen):
                    self.edges[f"{j}_{i}_{k}"] = make_op(op, channels, stride, sparse=False)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor | None = None):
        states = [self.pre0(s0), self.pre1(s1)]
        for j in range(self.nodes):
            total = 0
            for i in range(2 + j):
                if self.genotype is None:
                    w = weights[_edges(self.nodes).index((j, i))]
                    ops = self.edges[f"{j}_{i}"]
                    total = total + sum(wk * op(states[i]) for wk, op in zip(w, ops, strict=True))
                else:
                    for k in range(2):
                        key = f"{j}_{i}_{k}"
                        if key in self.edges:
                            total = total + self.edges[key](states[i])
            states.append(total)
        return torch.cat(states[2:], dim=1)


class _Backbone(nn.Module):
    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        channels: int,
        cells: int,
        nodes: int,
        genotype: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        stem = 3 * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem)
        )
        c_pp, c_p, c = stem, stem, channels
        reduction_prev = False
        self.cells = nn.ModuleList()
        reductions = {cells // 3, 2 * cells // 3} if cells >= 3 else {cells // 2}
        for index in range(cells):
            reduction = index in reductions
            c = c * 2 if reduction else c
            ops = None if genotype is None else genotype["reduce" if reduction else "normal"]
            self.cells.append(Cell(nodes, c_pp, c_p, c, reduction, reduction_prev, ops))
            reduction_prev = reduction
            c_pp, c_p = c_p, nodes * c
        self.features = c_p
        self.pool = nn.AdaptiveAvgPool2d(1)


class SearchNetwork(_Backbone):
    """The supernet: architecture parameters ``alpha_normal``, ``alpha_reduce``, ``alpha_head``."""

    def __init__(
        self, in_chans: int, num_classes: int, channels: int = 8, cells: int = 3, nodes: int = 3
    ) -> None:
        super().__init__(in_chans, num_classes, channels, cells, nodes, None)
        edges = len(_edges(nodes))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(edges, len(OPS)))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(edges, len(OPS)))
        self.alpha_head = nn.Parameter(1e-3 * torch.randn(len(HEADS)))
        self.heads = nn.ModuleList(
            SparseLinear(self.features, num_classes, sparsity=s) for s in HEADS.values()
        )

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce, self.alpha_head]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        normal, reduce = F.softmax(self.alpha_normal, -1), F.softmax(self.alpha_reduce, -1)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        features = self.pool(s1).flatten(1)
        head = F.softmax(self.alpha_head, -1)
        return sum(w * h(features) for w, h in zip(head, self.heads, strict=True))

    def expected_cost(self) -> torch.Tensor:
        """Softmax-weighted cost of the operations, normalised to [0, 1] (the sparsity-aware
        term of the search objective): cheap and sparse operations lower it."""
        costs = torch.tensor([op_cost(name, 1) for name in OPS])
        costs = costs / costs.max()
        cell_cost = (
            sum(
                (F.softmax(alpha, -1) * costs).sum(-1).mean()
                for alpha in (self.alpha_normal, self.alpha_reduce)
            )
            / 2
        )
        head_costs = torch.tensor([1 - s for s in HEADS.values()])
        return (cell_cost + (F.softmax(self.alpha_head, -1) * head_costs).sum()) / 2

    def genotype(self) -> dict[str, Any]:
        """DARTS discretisation: per node the two strongest incoming edges (by their best
        non-zero operation), each with that operation; the head with the largest weight."""
        names = list(OPS)
        nodes = self.cells[0].nodes

        def parse(alpha: torch.Tensor) -> list[tuple[str, int]]:
            weights = F.softmax(alpha, -1).detach()
            chosen = []
            for j in range(nodes):
                candidates = []
                for i in range(2 + j):
                    w = weights[_edges(nodes).index((j, i))]
                    best = max(
                        (k for k in range(len(names)) if names[k] != "none"),
                        key=lambda k: float(w[k]),
                    )
                    candidates.append((float(w[best]), names[best], i))
                top = sorted(candidates, reverse=True)[:2]
                chosen += [(name, i) for _, name, i in sorted(top, key=lambda c: c[2])]
            return chosen

        head = list(HEADS)[int(self.alpha_head.argmax())]
        return {
            "normal": parse(self.alpha_normal),
            "reduce": parse(self.alpha_reduce),
            "head": head,
        }


class DerivedNetwork(_Backbone):
    """The network of a genotype: plain Conv2d/Linear layers (the DASS method masks the ones
    whose operation is sparse, at that operation's sparsity)."""

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        genotype: dict[str, Any],
        channels: int = 8,
        cells: int = 3,
        nodes: int = 3,
    ) -> None:
        super().__init__(in_chans, num_classes, channels, cells, nodes, genotype)
        self.genotype = genotype
        self.classifier = nn.Linear(self.features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.pool(s1).flatten(1))

    def layer_sparsity(self) -> dict[str, float]:
        """Qualified name -> sparsity of every layer that belongs to a sparse operation."""
        out = {}
        for c, cell in enumerate(self.cells):
            ops = self.genotype["reduce" if cell.reduction else "normal"]
            for key in cell.edges:
                j, i, k = (int(v) for v in key.split("_"))
                name = [op for op, src in ops[2 * j : 2 * j + 2] if src == i][k]
                if OPS[name][0] == "conv" and OPS[name][2] > 0:
                    out[f"cells.{c}.edges.{key}.1"] = OPS[name][2]
        if HEADS[self.genotype["head"]] > 0:
            out["classifier"] = HEADS[self.genotype["head"]]
        return out

    def search_source(self) -> dict[str, str]:
        """Derived layer name -> the supernet parameter prefix it was searched as."""
        out = {}
        names = list(OPS)
        for c, cell in enumerate(self.cells):
            ops = self.genotype["reduce" if cell.reduction else "normal"]
            for key in cell.edges:
                j, i, k = (int(v) for v in key.split("_"))
                name = [op for op, src in ops[2 * j : 2 * j + 2] if src == i][k]
                if OPS[name][0] == "conv":  # ReLU, Conv2d, BatchNorm: the conv is item 1
                    out[f"cells.{c}.edges.{key}.1"] = (
                        f"cells.{c}.edges.{j}_{i}.{names.index(name)}.1"
                    )
        out["classifier"] = f"heads.{list(HEADS).index(self.genotype['head'])}"
        return out


def default_genotype(nodes: int = 3) -> dict[str, Any]:
    """A hand-made genotype (sparse 3x3 convolutions and skips) for ``model=dass`` alone."""
    cell = [("sparse_conv_3x3_s50", 0), ("sparse_conv_3x3_s50", 1)]
    for j in range(1, nodes):
        cell += [("sparse_conv_3x3_s50", j), ("skip_connect", j + 1)]
    return {"normal": cell, "reduce": list(cell), "head": "linear"}


def format_genotype(genotype: dict[str, Any]) -> str:
    cells = "; ".join(
        f"{kind}: " + ", ".join(f"{op}<-{src}" for op, src in genotype[kind])
        for kind in ("normal", "reduce")
    )
    return f"{cells}; head: {genotype['head']}"


def random_genotype(nodes: int, seed: int) -> dict[str, Any]:
    """A genotype drawn uniformly from the search space (the random-architecture baseline of
    architecture search): per node two distinct inputs, each with a non-zero operation, and a
    head."""
    import random

    rng = random.Random(seed)
    names = [o for o in OPS if o != "none"]

    def cell() -> list[tuple[str, int]]:
        edges = []
        for j in range(nodes):
            edges += [(rng.choice(names), i) for i in sorted(rng.sample(range(2 + j), 2))]
        return edges

    return {"normal": cell(), "reduce": cell(), "head": rng.choice(list(HEADS))}


def check_genotype(genotype: Any, nodes: int) -> dict[str, Any]:
    """A genotype from the config (JSON string or mapping), checked."""
    if isinstance(genotype, str) and genotype.strip() == "random":
        raise ConfigError(
            "transform.genotype=random is drawn by the DASS transform (with its seed)."
        )
    if isinstance(genotype, str):
        genotype = json.loads(genotype)
    ok = isinstance(genotype, dict) and genotype.get("head") in HEADS
    for kind in ("normal", "reduce"):
        cells = genotype.get(kind) if isinstance(genotype, dict) else None
        ok = ok and isinstance(cells, list) and len(cells) == 2 * nodes
        for index, edge in enumerate(cells or []):
            op, src = edge
            ok = ok and op in OPS and op != "none" and 0 <= int(src) < 2 + index // 2
    if not ok:
        raise ConfigError(
            f"transform.genotype is not a genotype for {nodes} nodes: it needs normal and reduce "
            f"lists of {2 * nodes} [operation, input] pairs (operations: "
            f"{', '.join(o for o in OPS if o != 'none')}; node j takes inputs 0..j+1) and a head "
            f"({', '.join(HEADS)}), got {genotype!r}."
        )
    return {k: [(op, int(src)) for op, src in genotype[k]] for k in ("normal", "reduce")} | {
        "head": genotype["head"]
    }
