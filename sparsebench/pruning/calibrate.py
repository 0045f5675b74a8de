"""Pruning on calibration data, each layer seeing the outputs of the layers pruned before it.

Models made of repeated blocks (the decoder blocks of a language model: ``model.blocks()``)
are calibrated block by block, as the reference implementations of SparseGPT (Frantar &
Alistarh, 2023) and Wanda (Sun et al., 2024) do: the calibration inputs of the first block are
captured once; each block's selected layers are pruned from the statistics of one pass through
the block; the pruned block's outputs are the next block's inputs. Memory and time are those of
one block's activations, never the whole model's.

Other models (and layers outside every block) are pruned layer by layer:
for each prunable layer in order, the calibration batches run through the model as pruned so
far, stopping at that layer; a forward pre-hook accumulates the statistics of its inputs (per
feature sum and sum of squares, and X^T X for SparseGPT), the method prunes the layer, and the
next layer is calibrated on the new outputs. Convolutions are seen through their unfolded
inputs, their weights as out x (kh * kw * in), so that N:M groups run along input channels
as in the training methods (sparsebench.sparsity.patterns.NM).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class _Captured(Exception):
    """Stops the forward pass once the layer's input is captured."""


@dataclass
class LayerStats:
    count: int = 0
    total: torch.Tensor | None = None  # per feature sum
    squares: torch.Tensor | None = None  # per feature sum of squares
    gram: torch.Tensor | None = None  # X^T X

    def add(self, x: torch.Tensor, gram: bool) -> None:
        x = x.float()
        if self.total is None:
            self.total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self.squares = torch.zeros_like(self.total)
            if gram:
                self.gram = torch.zeros(x.shape[1], x.shape[1], device=x.device)
        self.count += x.shape[0]
        self.total += x.sum(0, dtype=torch.float64)
        self.squares += x.square().sum(0, dtype=torch.float64)
        if gram:
            # fp32, as SparseGPT's reference accumulates H (fp64 products cost 2-4x on a CPU:
            # half of pruning OPT-125M's time); SparseGPT's update solves in fp64 from it.
            self.gram += x.T @ x

    @property
    def mean(self) -> torch.Tensor:
        return (self.total / max(self.count, 1)).float()

    @property
    def norm(self) -> torch.Tensor:
        return self.squares.sqrt().float()


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as samples x features, in the column order of
    :func:`sparsebench.sparsity.patterns.as_matrix` (kernel tap slowest, input channel fastest)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    conv: nn.Conv2d = module  # type: ignore[assignment]
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    batch, _, positions = cols.shape
    kernel = conv.kernel_size[0] * conv.kernel_size[1]
    cols = cols.view(batch, conv.in_channels, kernel, positions).transpose(1, 2)
    return (
        cols.reshape(batch, kernel * conv.in_channels, positions)
        .transpose(1, 2)
        .reshape(-1, kernel * conv.in_channels)
    )


@torch.no_grad()
def _run_until(model: nn.Module, module: nn.Module, batches: list[torch.Tensor], seen) -> None:
    """Run ``model`` on each batch up to ``module``: ``seen(args, kwargs)`` gets the call it
    is about to make, and the rest of the forward pass is skipped (not needed)."""

    def hook(_module, args, kwargs):
        seen(args, kwargs)
        raise _Captured

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(_Captured):
                model(batch)
    finally:
        handle.remove()


def collect(
    model: nn.Module, module: nn.Module, batches: list[torch.Tensor], gram: bool
) -> LayerStats:
    """Statistics of ``module``'s inputs over ``batches`` through the current ``model``."""
    stats = LayerStats()
    _run_until(
        model, module, batches, lambda args, _: stats.add(layer_inputs(module, args[0]), gram)
    )
    return stats


# A block's call: its positional and keyword arguments, the hidden states first (or by name).
Call = tuple[tuple, dict]


def _with_hidden(call: Call, hidden: torch.Tensor) -> Call:
    args, kwargs = call
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def block_inputs(model: nn.Module, block: nn.Module, batches: list[torch.Tensor]) -> list[Call]:
    """The calls ``model`` makes to ``block`` (its first block) for each batch, captured
    before the block runs (masks, positions and rotary embeddings included)."""
    calls: list[Call] = []
    _run_until(model, block, batches, lambda args, kwargs: calls.append((args, kwargs)))
    return calls


@torch.no_grad()
def block_stats(
    block: nn.Module, layers: dict[str, nn.Module], calls: list[Call], gram: bool
) -> dict[str, LayerStats]:
    """Statistics of each of ``layers``' inputs over one pass of ``calls`` through ``block``."""
    stats = {name: LayerStats() for name in layers}
    handles = [
        module.register_forward_pre_hook(
            lambda m, args, s=stats[name]: s.add(layer_inputs(m, args[0]), gram)
        )
        for name, module in layers.items()
    ]
    try:
        for args, kwargs in calls:
            block(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return stats


@torch.no_grad()
def block_outputs(block: nn.Module, calls: list[Call]) -> list[Call]:
    """The next block's calls: the same arguments with ``block``'s outputs as hidden states."""
    out = []
    for call in calls:
        hidden = block(*call[0], **call[1])
        out.append(_with_hidden(call, hidden[0] if isinstance(hidden, tuple) else hidden))
    return out


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, gram: torch.Tensor) -> float:
    """||W X^T - W' X^T||_F^2 from the Gram matrix: trace(D G D^T) with D = W - W'."""
    diff = (weight - pruned).double()
    return float(((diff @ gram.double()) * diff).sum())
