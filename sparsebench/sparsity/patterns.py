"""Sparsity patterns: which sets of weights are kept or removed together.

A pattern turns per-weight scores (e.g. |w|) into a boolean keep-mask at a given density:
- :class:`Unstructured`: any weights (top-k scores per layer).
- :class:`NM`: N of every M consecutive weights along the input dimension (for convs, along
  input channels), as NVIDIA's ASP does (Mishra et al. 2021, "Accelerating Sparse Deep Neural
  Networks"); the density is always N/M.
- :class:`Block`: whole (bh, bw) tiles of the weight matrix (:func:`as_matrix`), scored by their sum,
  for block-sparse kernels (1x4, 4x4, 32x32, ...); ``block4x1``, 4 output channels at one input
  position, is the group pattern of cpu_sparse's ``direct4x1`` kernel (after SparseByteNN, Xu et
  al. 2023).
- :class:`Channel`: whole output filters (rows), scored by their sum (filter norm for |w|).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from sparsebench.errors import ConfigError


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries of ``scores`` (any shape), exactly k of them."""
    flat = scores.reshape(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view_as(scores)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A weight as the matrix its layer multiplies: [out, prod(kernel) * in], the input channel
    varying fastest within a row (a Linear weight unchanged). The one layout of every pattern,
    post-training algorithm (unfolded inputs in the same column order), storage format and
    kernel: consecutive columns are consecutive input channels at one kernel tap, which is where
    N:M groups lie for NVIDIA's sparse tensor cores."""
    if weight.dim() == 2:
        return weight
    return weight.movedim(1, -1).reshape(weight.shape[0], -1)


def from_matrix(matrix: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`as_matrix` for a weight of ``shape``."""
    if len(shape) == 2:
        return matrix.reshape(shape)
    return matrix.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


class Pattern(ABC):
    kind: str = "base"

    @abstractmethod
    def mask(self, scores: torch.Tensor, density: float) -> torch.Tensor:
        """Keep-mask of the same shape as ``scores`` with the given fraction kept."""

    def granularity(self, shape: torch.Size) -> int:
        """Weights removed together (the tolerance of a layer's achieved density)."""
        return 1

    def check(self, name: str, shape: torch.Size) -> None:
        """Raise ConfigError if a layer of this shape cannot take the pattern."""
        return None

    def fixed_density(self) -> float | None:
        """The density the pattern imposes on every layer (N:M), else None."""
        return None

    def units(self, scores: torch.Tensor) -> torch.Tensor:
        """The scores of the pattern's units, the sets of weights kept or removed together
        (single weights; blocks: the tile sums of :func:`as_matrix`). Methods that move single
        weights (RigL, SET, ISS-P, DSnoT) move these units instead. Unstructured and block
        patterns have them; N:M and channel patterns choose within or across whole groups."""
        raise NotImplementedError(f"the {self.kind} pattern has no units to move one by one")

    def expand(self, keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """A keep-mask of the units (:meth:`units`' layout) as a mask of a weight of ``shape``."""
        raise NotImplementedError(f"the {self.kind} pattern has no units to move one by one")

    @property
    def label(self) -> str:
        """The one spelling of this pattern in tags, leaderboards and hardware targets:
        ``unstructured``, ``2:4``, ``block1x4`` or ``channel``."""
        return self.kind


@dataclass
class Unstructured(Pattern):
    kind: str = "unstructured"

    def mask(self, scores: torch.Tensor, density: float) -> torch.Tensor:
        return topk_mask(scores, round(density * scores.numel()))

    def units(self, scores: torch.Tensor) -> torch.Tensor:
        return scores

    def expand(self, keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return keep.reshape(shape)


@dataclass
class NM(Pattern):
    n: int = 2
    m: int = 4
    kind: str = "nm"

    def __post_init__(self) -> None:
        if not (0 < self.n < self.m):
            raise ConfigError(f"N:M sparsity needs 0 < N < M, got {self.n}:{self.m}.")

    def check(self, name: str, shape: torch.Size) -> None:
        if shape[1] % self.m:
            raise ConfigError(
                f"N:M pattern {self.n}:{self.m} needs every pruned layer's input dimension divisible "
                f"by {self.m}; layer '{name}' has {shape[1]} (exclude it with method.exclude)."
            )

    def fixed_density(self) -> float:
        return self.n / self.m

    @property
    def label(self) -> str:
        return f"{self.n}:{self.m}"

    def granularity(self, shape: torch.Size) -> int:
        return self.m

    def mask(self, scores: torch.Tensor, density: float | None = None) -> torch.Tensor:
        groups = as_matrix(scores).reshape(scores.shape[0], -1, self.m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, groups.topk(self.n, dim=-1, sorted=False).indices, True)
        return from_matrix(keep.reshape(scores.shape[0], -1), scores.shape)


def is_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """True if every group of m along the input dimension has at most n kept entries."""
    groups = as_matrix(mask.to(torch.int32)).reshape(mask.shape[0], -1, m)
    return bool((groups.sum(-1) <= n).all())


@dataclass
class Block(Pattern):
    block: tuple[int, int] = (1, 4)
    kind: str = "block"

    def __post_init__(self) -> None:
        self.block = tuple(int(b) for b in self.block)  # type: ignore[assignment]
        if len(self.block) != 2 or min(self.block) < 1:
            raise ConfigError(f"block pattern needs [rows, cols] >= 1, got {list(self.block)}.")

    def check(self, name: str, shape: torch.Size) -> None:
        rows, cols = shape[0], int(torch.Size(shape[1:]).numel())
        if rows % self.block[0] or cols % self.block[1]:
            raise ConfigError(
                f"block pattern {self.block[0]}x{self.block[1]} does not tile layer '{name}' "
                f"({rows}x{cols} as a matrix)."
            )

    def granularity(self, shape: torch.Size) -> int:
        return self.block[0] * self.block[1]

    @property
    def label(self) -> str:
        return f"block{self.block[0]}x{self.block[1]}"

    def units(self, scores: torch.Tensor) -> torch.Tensor:
        bh, bw = self.block
        mat = as_matrix(scores)
        return mat.reshape(mat.shape[0] // bh, bh, mat.shape[1] // bw, bw).sum(dim=(1, 3))

    def expand(self, keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        bh, bw = self.block
        return from_matrix(keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1), shape)

    def mask(self, scores: torch.Tensor, density: float) -> torch.Tensor:
        tiles = self.units(scores)
        return self.expand(topk_mask(tiles, round(density * tiles.numel())), scores.shape)


@dataclass
class Channel(Pattern):
    kind: str = "channel"

    def granularity(self, shape: torch.Size) -> int:
        return int(torch.Size(shape[1:]).numel())

    def mask(self, scores: torch.Tensor, density: float) -> torch.Tensor:
        rows = as_matrix(scores).sum(dim=1)
        keep = topk_mask(rows, max(1, round(density * rows.numel())))
        return keep.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores).clone()


PATTERNS: dict[str, type[Pattern]] = {
    "unstructured": Unstructured,
    "nm": NM,
    "block": Block,
    "channel": Channel,
}


def pattern_label(pattern: Pattern | None) -> str:
    """``dense`` for no pattern (dense training), else :attr:`Pattern.label`. Results of
    different patterns are never comparable one-for-one (docs/methods.md, fair comparison)."""
    return "dense" if pattern is None else pattern.label


def matches(pattern: Pattern | None, names: tuple[str, ...] | list[str]) -> bool:
    """Whether ``names`` (labels such as ``2:4`` or kinds such as ``nm``) include ``pattern``."""
    return pattern is not None and (pattern.label in names or pattern.kind in names)


LABEL_HELP = "unstructured, channel, N:M (e.g. 2:4) or blockRxC (e.g. block1x4)"


def parse_pattern(value: str | Pattern, where: str = "method.pattern") -> Pattern:
    """The pattern a label names: the one spelling of a pattern in configs, tags, leaderboards
    and hardware targets (``unstructured``, ``2:4``, ``block1x4``, ``channel``)."""
    if isinstance(value, Pattern):
        return value
    text = str(value).strip()
    nm = re.fullmatch(r"(\d+):(\d+)", text)
    block = re.fullmatch(r"block(\d+)x(\d+)", text)
    if text in ("unstructured", "channel"):
        return Unstructured() if text == "unstructured" else Channel()
    if nm:
        return NM(int(nm.group(1)), int(nm.group(2)))
    if block:
        return Block((int(block.group(1)), int(block.group(2))))
    hint = ' (quote N:M in yaml: pattern: "2:4")' if isinstance(value, int) else ""
    raise ConfigError(f"{where} must be {LABEL_HELP}, got '{value}'{hint}.")
