"""Post-training pruning of one layer from its calibration inputs.

A layer is a weight matrix ``W`` (out x in; a convolution's weight as
:func:`sparsebench.sparsity.patterns.as_matrix` lays it out, matching its unfolded input) and its
calibration inputs ``X`` (samples x in). Every function returns a boolean keep-mask of ``W``'s
shape (SparseGPT also new weights). Patterns are the training methods' own
(:mod:`sparsebench.sparsity.patterns`): unstructured at ``density`` per comparison group,
N:M along the input dimension (``n`` kept of every ``m`` consecutive inputs of a row), or
blocks (``block4x1``: 4 output rows keep or drop an input together), compared as units (their
scores summed) within each row of blocks.

- magnitude: |W|, per layer (Han et al. 2015).
- Wanda: |W_ij| * ||X_j||_2, compared within each output row (Sun et al., "A Simple and
  Effective Pruning Approach for Large Language Models", ICLR 2024).
- SparseGPT: column by column with the inverse Hessian H^-1 of H = X^T X (+1% of its mean
  diagonal), each pruned weight's error spread over the columns not yet processed, the mask
  chosen per block of columns by w^2 / [H^-1]_jj^2 (Frantar & Alistarh, "SparseGPT: Massive
  Language Models Can Be Accurately Pruned in One-Shot", ICML 2023).
- DSnoT: from a starting mask, per output row swap one pruned and one kept weight per cycle so
  that the expected reconstruction error sum_j W_ij (1 - M_ij) E[X_j] moves towards zero, until
  it is below ``threshold`` or after ``max_cycles``; no weight update (Zhang et al., "Dynamic
  Sparse No Training: Training-Free Fine-tuning for Sparse LLMs", ICLR 2024).

Written from the papers' descriptions; the algorithms are few lines of linear algebra that no
maintained library exposes for arbitrary torch layers (SparseML/llm-compressor target LLMs).
"""

from __future__ import annotations

import torch

from sparsebench.sparsity.patterns import NM, Block, Pattern


def keep_top(scores: torch.Tensor, pattern: Pattern, density: float, per_row: bool) -> torch.Tensor:
    """Keep-mask of the highest scores: per group of ``m`` inputs (N:M), per row (of blocks,
    for a block pattern), or per layer (the training patterns' own masks; per row is what these
    methods add)."""
    if isinstance(pattern, NM):
        return pattern.mask(scores)
    if per_row:
        units = pattern.units(scores)  # single scores, or block sums
        index = units.topk(round(density * units.shape[1]), dim=1).indices
        keep = torch.zeros_like(units, dtype=torch.bool).scatter_(1, index, True)
        return pattern.expand(keep, scores.shape)
    return pattern.mask(scores, density)


def magnitude(weight: torch.Tensor, pattern: Pattern, density: float) -> torch.Tensor:
    return keep_top(weight.abs(), pattern, density, per_row=False)


def wanda(
    weight: torch.Tensor, x_norm: torch.Tensor, pattern: Pattern, density: float
) -> torch.Tensor:
    """``x_norm``: the L2 norm of each input feature over the calibration samples."""
    return keep_top(weight.abs() * x_norm[None, :], pattern, density, per_row=True)


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    pattern: Pattern,
    density: float,
    block: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(new weights, keep-mask). ``hessian``: X^T X over the calibration samples (in x in)."""
    w = weight.detach().clone().double()
    h = hessian.detach().clone().double()
    cols = w.shape[1]
    # Inputs that were always zero (e.g. padded taps of a 3x3 conv on 1x1 maps): their weights
    # do nothing on this data, so they are pruned first (score 0) and count towards the
    # sparsity; they are not zeroed beyond the mask, which would overshoot the target.
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diag(h).mean() * torch.eye(cols, dtype=h.dtype)
    # Upper Cholesky factor of H^-1: row i holds the update of the columns after i.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    keep = torch.ones_like(w, dtype=torch.bool)
    nm = isinstance(pattern, NM)
    # Column blocks hold whole N:M groups, or whole blocks of a block pattern.
    width = pattern.m if nm else pattern.block[1] if isinstance(pattern, Block) else 1
    block = width * max(1, block // width)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1, h1 = w[:, start:end].clone(), hinv[start:end, start:end]
        errors = torch.zeros_like(w1)
        d = torch.diag(h1)
        live = (~dead[start:end]).double()[None, :]
        if not nm:  # adaptive mask per block: the lowest w^2 / d^2 over the block
            keep[:, start:end] = keep_top(
                w1**2 / d[None, :] ** 2 * live, pattern, density, per_row=False
            )
        for i in range(end - start):
            if nm and i % pattern.m == 0:
                group = slice(i, i + pattern.m)
                scores = w1[:, group] ** 2 / d[None, group] ** 2 * live[:, group]
                keep[:, start + i : start + i + pattern.m] = pattern.mask(scores)
            column = w1[:, i].clone()
            pruned = column * ~keep[:, start + i]
            errors[:, i] = pruned / d[i]
            w1[:, i:] -= errors[:, i : i + 1] * h1[i : i + 1, i:]
            w1[:, i] = column * keep[:, start + i]
        w[:, start:end] = w1
        w[:, end:] -= errors @ hinv[start:end, end:]
    return (w * keep).to(weight.dtype), keep


def dsnot(
    weight: torch.Tensor,
    keep: torch.Tensor,
    x_mean: torch.Tensor,
    x_norm: torch.Tensor,
    pattern: Pattern,
    threshold: float = 0.1,
    max_cycles: int = 50,
) -> torch.Tensor:
    """Refine ``keep`` by one-for-one swaps per row (each row keeps its count, each N:M group
    its n; a block pattern swaps blocks: :func:`dsnot_blocks`). ``x_mean`` and ``x_norm``: mean
    and L2 norm of each input over the samples."""
    if isinstance(pattern, Block):
        return dsnot_blocks(weight, keep, x_mean, x_norm, pattern, threshold, max_cycles)
    w = weight.detach().float()
    keep = keep.clone()
    contribution = w * x_mean[None, :]  # expected share of each weight in its output
    importance = w.abs() * x_norm[None, :]  # Wanda's score: what pruning a weight costs
    rows = torch.arange(w.shape[0])
    inf = torch.finfo(w.dtype).max
    for _ in range(max_cycles):
        error = (contribution * ~keep).sum(1)  # dense output - sparse output, expected
        active = error.abs() > threshold
        if not active.any():
            break
        sign = torch.sign(error)[:, None]
        # Grow: the pruned weight that moves the sparse output most towards the dense one.
        grow_gain = torch.where(~keep & (contribution * sign > 0), contribution.abs(), -inf)
        grow = grow_gain.argmax(1)
        allowed = keep & (contribution * sign < 0)  # pruning these also shrinks the error
        if isinstance(pattern, NM):  # stay inside the grown weight's group of m
            group = torch.arange(w.shape[1])[None, :] // pattern.m
            allowed &= group == (grow // pattern.m)[:, None]
        # Prune: the least important such kept weight.
        prune = torch.where(allowed, importance, inf).argmin(1)
        new_error = error - contribution[rows, grow] + contribution[rows, prune]
        ok = (
            active
            & (grow_gain[rows, grow] > -inf)
            & allowed[rows, prune]
            & (new_error.abs() < error.abs())
        )
        if not ok.any():
            break
        keep[rows[ok], grow[ok]] = True
        keep[rows[ok], prune[ok]] = False
    return keep


def dsnot_blocks(
    weight: torch.Tensor,
    keep: torch.Tensor,
    x_mean: torch.Tensor,
    x_norm: torch.Tensor,
    pattern: Block,
    threshold: float = 0.1,
    max_cycles: int = 50,
) -> torch.Tensor:
    """DSnoT's swaps with whole blocks. A row of blocks spans ``bh`` output rows, so its
    expected error is a vector e (one entry per row); per cycle it grows the pruned block whose
    contribution c reduces ||e||^2 most (2 e.c - ||c||^2 > 0) and prunes the least important
    kept block (Wanda's score summed over the block) whose removal leaves ||e|| below its value
    before the swap; rows of blocks with ||e|| <= ``threshold`` are done. With ``bh = 1`` the
    error is DSnoT's own scalar; the choice of the grown weight differs from :func:`dsnot`'s
    (largest reduction rather than largest same-sign contribution)."""
    bh, bw = pattern.block
    w = weight.detach().float()
    rows, cols = w.shape
    contribution = (w * x_mean[None, :]).reshape(rows // bh, bh, cols // bw, bw).sum(3)
    contribution = contribution.permute(0, 2, 1)  # row of blocks x block x row within: c
    importance = pattern.units(w.abs() * x_norm[None, :])
    kept = pattern.units(keep.float()) > 0
    groups = torch.arange(kept.shape[0])
    inf = torch.finfo(w.dtype).max
    for _ in range(max_cycles):
        error = (contribution * ~kept[..., None]).sum(1)  # dense - sparse output, expected
        norm2 = (error**2).sum(-1)
        active = norm2 > threshold**2
        if not active.any():
            break
        gain = 2 * (contribution * error[:, None, :]).sum(-1) - (contribution**2).sum(-1)
        gain = torch.where(~kept & (gain > 0), gain, -inf)
        grow = gain.argmax(1)
        after_grow = error - contribution[groups, grow]
        new_norm2 = ((after_grow[:, None, :] + contribution) ** 2).sum(-1)
        allowed = kept & (new_norm2 < norm2[:, None])
        prune = torch.where(allowed, importance, inf).argmin(1)
        ok = active & (gain[groups, grow] > -inf) & allowed[groups, prune]
        if not ok.any():
            break
        kept[groups[ok], grow[ok]] = True
        kept[groups[ok], prune[ok]] = False
    return pattern.expand(kept, keep.shape)
