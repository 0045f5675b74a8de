"""Sparse training kernels: a masked Linear or Conv2d layer's training step computed at its
nonzeros (SparseProp, Nikdan et al., ICML 2023, does the same with kernels of its own).

A Linear layer is a 1x1 convolution of one image whose pixels are the batch's rows. With the
weight W masked, the three products of a step are:

- forward, y = W * x: the direct kernel of ``cpu_sparse`` (:mod:`sparsebench.hardware.direct`,
  Elsen et al. 2020) on the mask's nonzeros, the kept values read from the dense weight;
- input gradient, dx = W^T * dy: the same kernel on W^T's structure (kept beside the forward
  one), flipped taps over the padded output gradient; a stride s splits dx into its s x s
  phases, each a stride-1 product with the taps that reach it (no zeros inserted into dy);
- weight gradient at the mask's nonzeros only: for each kept weight, the dot product of the
  output gradient's row with the input run it multiplied in the forward (``sparse_rows_grad``).

The optimizer's update is then made at the nonzeros too (:class:`SparseUpdate`: SGD with
momentum, dampening, Nesterov and weight decay; Adam and AdamW), its state kept in the
optimizer's own dense tensors, so checkpoints and resumption are torch's. The dense ``weight``
Parameter stays what the methods and checkpoints see; masked weights never get a gradient.

Structures are built from the mask and rebuilt when the mask changes (its tensor version moves
on: RigL, SET, GMP, IMP rounds). A step that needs the dense gradient (RigL's grow step)
computes it densely and leaves that step's update to the optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.hardware.direct import sparse_rows_op
from sparsebench.hardware.sparse_products import (
    Plan,
    as_image,
    forward_product,
    input_grad,
    weight_grad,
)
from sparsebench.sparsity.masks import MASK, ZEROED


class _SparseStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, kernel: SparseKernel):
        plan = kernel.plan
        linear = kernel.linear
        x4 = as_image(x, linear)
        values = plan.kept(weight)
        y4, inp = forward_product(plan, x4, values, bias)
        ctx.save_for_backward(x, x4, *(() if inp is None else (inp,)))
        ctx.kernel, ctx.plan, ctx.has_bias = kernel, plan, bias is not None
        ctx.dense_grad, ctx.values = kernel.dense_grad, values
        if linear:
            return y4[0, :, 0].t().reshape(*x.shape[:-1], y4.shape[1])
        return y4

    @staticmethod
    def backward(ctx, grad):
        x, x4, *inp = ctx.saved_tensors
        kernel, plan = ctx.kernel, ctx.plan
        plan.busy = False
        linear = kernel.linear
        module = kernel.module
        dy4 = as_image(grad, linear)
        if not linear:
            dy4 = dy4.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx4 = input_grad(plan, dy4, ctx.values, *x4.shape[2:])
            dx = dx4[0, :, 0].t().reshape(x.shape) if linear else dx4
        if ctx.needs_input_grad[1]:
            if ctx.dense_grad:  # every weight's gradient (RigL's grow step)
                dw = _dense_weight_grad(module, x, grad)
                if kernel.plan.grad is not None:  # accumulated over earlier micro-batches
                    dw.view(-1).index_add_(0, kernel.plan.flat, kernel.plan.grad)
                    kernel.plan.grad = None
            else:
                kernel.deliver(weight_grad(plan, inp[0] if inp else None, x4, dy4), plan)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.reshape(-1, grad.shape[-1]).sum(0) if linear else grad.sum((0, 2, 3))
        return dx, dw, db, None


def _dense_weight_grad(module: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return dy.reshape(-1, dy.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
    return torch.nn.grad.conv2d_weight(
        x, module.weight.shape, dy, module.stride, module.padding, module.dilation, module.groups
    )


class SparseKernel:
    """A masked ``nn.Linear`` or ``nn.Conv2d`` trained with the sparse kernels: installed as the
    module's forward (the module, its Parameters and state dict unchanged), removed by
    :meth:`remove`.

    ``active`` False: the step runs the module's own (dense) forward (the method's masks are
    soft); ``dense_grad``: this step's weight gradient is dense (RigL's grow step); ``compact``
    (set by :class:`SparseUpdate`): the kept weights' gradient is kept for the update at the
    nonzeros instead of being written into ``weight.grad``."""

    def __init__(self, module: nn.Module) -> None:
        sparse_rows_op()  # the kernels' library, built on first use
        self.module = module
        self.linear = isinstance(module, nn.Linear)
        self.plan = Plan(module, getattr(module, MASK))
        self.active = True
        self.dense_grad = False
        self.compact = False
        # Training forwards by how they ran: sparse; dense (masks soft, nothing masked yet);
        # sparse with the dense weight gradient (RigL's grow steps).
        self.steps = {"sparse": 0, "dense": 0, "dense gradient": 0}
        module.forward = self.forward  # an instance attribute: shadows the class's forward
        setattr(module, ZEROED, None)  # masks.apply() may skip this layer (see ZEROED)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.module).forward(self.module, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = getattr(self.module, MASK)
        if self.plan.version != mask._version:  # the method changed the mask
            self.rebuild(mask)
        training = torch.is_grad_enabled() and self.module.training
        if not self.active or len(self.plan.flat) == mask.numel():  # nothing masked yet
            self.steps["dense"] += training
            return self.dense(x)
        self.steps["dense gradient" if self.dense_grad else "sparse"] += training
        module = self.module
        return _SparseStep.apply(x, module.weight, module.bias, self)

    def rebuild(self, mask: torch.Tensor) -> None:
        old, self.plan = self.plan, Plan(self.module, mask)
        if old.grad is not None:  # gradient accumulation across a mask update: carried over
            self.plan.grad = _reindex(old.grad, old, self.plan, mask.numel())
        self.plan.buffer = old.buffer
        if old.buffer is not None:
            old.buffer.zero_()  # its nonzeros were the old mask's

    def deliver(self, kept: torch.Tensor, source: Plan) -> None:
        """The kept weights' gradient of a backward (in ``source``'s order): kept compact for
        :class:`SparseUpdate`, or added into ``weight.grad`` (zero at masked weights)."""
        plan, weight = self.plan, self.module.weight
        if source is not plan:  # the mask changed between the forward and its backward
            kept = _reindex(kept, source, plan, weight.numel())
        if self.compact:
            plan.grad = kept if plan.grad is None else plan.grad + kept
            return
        # The dense buffer is the plan's, kept between steps: a fresh dense gradient every step
        # would cost a page fault per 4 kB (25 ms for a 4096 x 4096 layer here). Its masked
        # entries are zero and stay zero (every later change of a gradient is a product).
        if weight.grad is None:
            if plan.buffer is None:
                plan.buffer = torch.zeros_like(weight)
            plan.buffer.view(-1).index_copy_(0, plan.flat, kept)
            weight.grad = plan.buffer
        else:
            weight.grad.view(-1).index_add_(0, plan.flat, kept)
        plan.buffered = weight.grad is plan.buffer

    def pop_grad(self) -> torch.Tensor | None:
        """This step's kept-weight gradient if the step was sparse (``weight.grad`` then
        cleared, so that the optimizer leaves the weight to :class:`SparseUpdate`), else None."""
        plan, weight = self.plan, self.module.weight
        if plan.grad is not None:
            grad, plan.grad = plan.grad, None
            return grad
        if plan.buffered and weight.grad is plan.buffer:
            plan.buffered = False
            grad = torch.take(weight.grad, plan.flat)
            weight.grad = None
            return grad
        return None

    def gradient(self) -> torch.Tensor | None:
        """The weight's gradient as a dense tensor (a compact one scattered), for inspection."""
        if self.plan.grad is None:
            return self.module.weight.grad
        dense = torch.zeros_like(self.module.weight)
        dense.view(-1)[self.plan.flat] = self.plan.grad
        return dense

    def remove(self) -> None:
        del self.module.forward
        delattr(self.module, ZEROED)


def _reindex(kept: torch.Tensor, source: Plan, target: Plan, numel: int) -> torch.Tensor:
    """Kept-weight values in ``source``'s order moved to ``target``'s (zero where ``target``
    keeps a weight ``source`` did not)."""
    dense = kept.new_zeros(numel).index_copy_(0, source.flat, kept)
    return torch.take(dense, target.flat)


def refusal(module: nn.Module) -> str | None:
    """Why ``module`` trains with dense kernels, or None when the sparse ones take it."""
    if not isinstance(module, nn.Linear | nn.Conv2d):
        return f"no sparse training kernel for {type(module).__name__} (Linear and Conv2d)"
    if getattr(module, "parametrizations", None) is not None:
        return "its weight is parametrized (the method computes it every step)"
    if module.weight.device.type != "cpu":
        return "the kernels are CPU kernels"
    if module.weight.dtype != torch.float32:
        return f"the kernels are float32 kernels (the weight is {module.weight.dtype})"
    if isinstance(module, nn.Conv2d) and (
        module.padding_mode != "zeros" or isinstance(module.padding, str)
    ):
        return "the kernels take zero padding given in pixels"
    return None
