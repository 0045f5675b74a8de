"""The optimizer's update at a sparse layer's nonzeros: the last part of a sparse training step
(:mod:`sparsebench.hardware.training` computes the forward and both gradients)."""

from __future__ import annotations

import torch

from sparsebench.hardware.training import SparseKernel


def update_refusal(optimizer: torch.optim.Optimizer) -> str | None:
    """Why :class:`SparseUpdate` cannot make ``optimizer``'s update (None: it can)."""
    name = type(optimizer).__name__
    if type(optimizer) not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        return f"{name} has no update at the nonzeros (SGD, Adam, AdamW have)"
    for group in optimizer.param_groups:
        for option in ("maximize", "amsgrad", "capturable", "differentiable"):
            if group.get(option):
                return f"{name} with {option}=True has no update at the nonzeros"
    return None


class SparseUpdate:
    """The optimizer's update of the sparse kernels' layers made at their nonzeros only.

    Installed as ``optimizer.step`` (an instance attribute, over torch's or an LR scheduler's):
    it runs the closure (the forward and backward), updates each kernel layer whose step was
    sparse from its kept-weight gradient, in the optimizer's own state tensors (dense, as torch
    keeps them, touched at the nonzeros), then lets torch's step update everything else (a
    Parameter without ``.grad`` is skipped by it). Dense steps (RigL's grow step) stay torch's.
    Masked weights are never written, so the method's masking pass skips these layers.

    The arithmetic is torch's (``torch.optim.SGD``'s and ``_single_tensor_adam``'s formulas);
    the kernels are ``sgd_at`` and ``adam_at`` of ``sparse_train.cpp``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kernels: list[SparseKernel]) -> None:
        self.optimizer = optimizer
        self.kernels = {id(k.module.weight): k for k in kernels}
        self.inner = optimizer.__dict__.get("step")  # an LR scheduler's wrapper, if any
        self.torch_step = optimizer.step
        optimizer.step = self
        self.adam = isinstance(optimizer, torch.optim.Adam)
        self.updates = 0  # layer updates made at the nonzeros
        if getattr(self.inner, "_wrapped_by_lr_sched", False):
            self._wrapped_by_lr_sched = True  # the scheduler's wrapper still runs (inside)

    def __call__(self, closure=None, **kwargs):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.update()
        self.torch_step(**kwargs)
        return loss

    @torch.no_grad()
    def update(self) -> None:
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                kernel = self.kernels.get(id(p))
                grad = kernel.pop_grad() if kernel is not None else None
                if grad is None:
                    continue
                values = kernel.plan.kept(p)
                state = self.optimizer.state[p]
                lr = float(group["lr"])
                if self.adam:
                    self.adam_step(p, values, grad, kernel.plan.flat, state, group, lr)
                else:
                    self.sgd_step(p, values, grad, kernel.plan.flat, state, group, lr)
                self.updates += 1

    @staticmethod
    def sgd_step(p, values, grad, flat, state, group, lr) -> None:
        momentum = group["momentum"]
        buf = state.get("momentum_buffer")
        first = buf is None
        if momentum != 0 and first:
            buf = state["momentum_buffer"] = torch.zeros_like(p)
        torch.ops.sparsebench.sgd_at(
            p,
            values,
            grad,
            flat,
            buf if buf is not None else p.new_empty(0),
            lr,
            momentum,
            group["dampening"],
            group["weight_decay"],
            group["nesterov"],
            first,
        )

    def adam_step(self, p, values, grad, flat, state, group, lr) -> None:
        if not state:  # as torch's Adam starts a parameter's state
            state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        decoupled = isinstance(self.optimizer, torch.optim.AdamW) or group.get(
            "decoupled_weight_decay", False
        )
        torch.ops.sparsebench.adam_at(
            p,
            values,
            grad,
            flat,
            state["exp_avg"],
            state["exp_avg_sq"],
            lr,
            beta1,
            beta2,
            group["eps"],
            group["weight_decay"],
            decoupled,
            float(state["step"]),
        )

    def remove(self) -> None:
        if self.inner is not None:
            self.optimizer.step = self.inner
        else:
            del self.optimizer.step
