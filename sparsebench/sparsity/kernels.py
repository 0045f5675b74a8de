"""Sparse training kernels: a masked Linear layer's training step computed at its nonzeros.

The three products of a step with the weight W (out x in) masked (SparseProp, Nikdan et al.,
ICML 2023, does the same with its own kernels; here torch.sparse's, MKL on the CPU):

- forward, y = x W^T: the masked W as a CSR matrix times the dense input;
- input gradient, dx = dy W: the CSR matrix of W^T (kept beside the forward one) times dy;
- weight gradient at the mask's nonzeros only, dW[i, j] = sum_b dy[b, i] x[b, j] for kept (i, j):
  a sampled dense-dense product (``torch.sparse.sampled_addmm``), so masked weights never get a
  dense gradient; their entries of ``weight.grad`` are zero.

The dense ``weight`` Parameter stays what the optimizer, the methods and checkpoints see; the
kernels read its kept values each step (a gather of nnz entries). The CSR structures are built
from the mask and rebuilt when the mask changes (its tensor version moves on: RigL, SET, GMP,
IMP rounds). A step that needs the dense gradient (RigL's grow step) computes it densely.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.sparsity.masks import MASK


@dataclass
class Plan:
    """The CSR structures of one masked layer's kept weights, for the mask version they were
    built from."""

    version: int
    flat: torch.Tensor  # flat indices of the kept weights, in row-major (CSR) order
    crow: torch.Tensor
    col: torch.Tensor
    t_crow: torch.Tensor  # W^T's CSR structure
    t_col: torch.Tensor
    t_order: torch.Tensor  # W^T's values = W's CSR values[t_order]
    grad: torch.Tensor | None = None  # the weight gradient's buffer (see _accumulate)

    @classmethod
    def of(cls, mask: torch.Tensor) -> Plan:
        rows, cols = mask.nonzero(as_tuple=True)  # row-major: CSR order
        out_features, in_features = mask.shape
        crow = _crow(rows, out_features)
        order = torch.argsort(cols * out_features + rows)  # W^T row-major: by column, then row
        return cls(
            mask._version,
            rows * in_features + cols,
            crow,
            cols.to(torch.int32),
            _crow(cols[order], in_features),
            rows[order].to(torch.int32),
            order,
        )


def _crow(rows: torch.Tensor, count: int) -> torch.Tensor:
    """CSR row pointers (int32: MKL's sparse routines take 32-bit indices) of sorted ``rows``."""
    counts = torch.bincount(rows, minlength=count)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)


def _csr(crow, col, values, shape) -> torch.Tensor:
    # The structure is built here from a mask, so torch's invariant checks are not needed;
    # torch's beta warning about CSR tensors is silenced for this call only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class _SparseLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, plan: Plan, dense_grad: bool):
        values = torch.take(weight, plan.flat)  # (indexing with [] is 4x slower)
        w = _csr(plan.crow, plan.col, values, weight.shape)
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.sparse.mm(w, x2.t()).t()
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x2, values, weight)
        ctx.plan, ctx.shape, ctx.has_bias = plan, x.shape, bias is not None
        ctx.dense_grad = dense_grad  # this step's weight gradient densely (RigL's grow step)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, values, weight = ctx.saved_tensors
        plan = ctx.plan
        dy = grad.reshape(-1, weight.shape[0])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            wt = _csr(plan.t_crow, plan.t_col, torch.take(values, plan.t_order), weight.shape[::-1])
            dx = torch.sparse.mm(wt, dy.t()).t().reshape(ctx.shape)
        if ctx.needs_input_grad[1]:
            if ctx.dense_grad:
                dw = dy.t() @ x2
            else:
                pattern = _csr(plan.crow, plan.col, torch.zeros_like(values), weight.shape)
                kept = torch.sparse.sampled_addmm(pattern, dy.t(), x2, beta=0.0).values()
                _accumulate(weight, plan, kept)  # weight.grad set here: dw stays None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0)
        return dx, dw, db, None, None


def _accumulate(weight: torch.Tensor, plan: Plan, kept: torch.Tensor) -> None:
    """Add the kept weights' gradient to ``weight.grad``, written in place into the plan's
    buffer when there is none yet: a fresh dense gradient every step would cost a page fault
    per 4 kB (25 ms for a 4096 x 4096 layer here, more than the sparse products). The buffer's
    masked entries are zero and stay zero (every later change of a gradient is a product:
    mask_grads, clipping); only the kept entries are written."""
    if weight.grad is None:
        if plan.grad is None:
            plan.grad = torch.zeros_like(weight)
        plan.grad.view(-1).index_copy_(0, plan.flat, kept)
        weight.grad = plan.grad
    else:
        weight.grad.view(-1).index_add_(0, plan.flat, kept)


class SparseKernel:
    """A masked ``nn.Linear`` trained with the sparse kernels: installed as the module's
    forward (the module, its Parameters and state dict unchanged), removed by :meth:`remove`."""

    def __init__(self, module: nn.Linear) -> None:
        self.module = module
        self.plan = Plan.of(getattr(module, MASK))
        self.active = True  # False: this step runs dense (the method's masks are soft)
        self.dense_grad = False
        module.forward = self.forward  # an instance attribute: shadows Linear.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = getattr(self.module, MASK)
        if self.plan.version != mask._version:  # the method changed the mask
            self.plan = Plan.of(mask)
        module = self.module
        if not self.active or len(self.plan.flat) == mask.numel():  # nothing masked yet
            return F.linear(x, module.weight, module.bias)
        return _SparseLinear.apply(x, module.weight, module.bias, self.plan, self.dense_grad)

    def remove(self) -> None:
        del self.module.forward


def refusal(module: nn.Module) -> str | None:
    """Why ``module`` trains with dense kernels, or None when the sparse ones take it."""
    if not isinstance(module, nn.Linear):
        return f"no sparse training kernel for {type(module).__name__} (Linear only)"
    if getattr(module, "parametrizations", None) is not None:
        return "its weight is parametrized (the method computes it every step)"
    if module.weight.device.type != "cpu":
        return "the kernels are CPU kernels"
    return None
