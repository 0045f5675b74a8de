"""``trainer.sparse_kernels``: which masked layers train with the sparse kernels
(:mod:`sparsebench.hardware.training`), and when a step runs them.

``on``: every masked layer the kernels take; ``auto``: those where a training step (forward and
backward) of the layer at its real input shape is faster with them, timed side by side at the
start of training; ``off``: none. The choice per layer, with the reason where a layer stays dense,
is ``kernels_train`` in results.json. A step runs a layer dense while its method's masks are soft
(straight-through or soft-mask phases: the forward is the method's own) or while nothing is
masked yet (before magnitude's ``prune_at``, soups' dense phases); a step whose method reads the
dense gradient (RigL's grow step) computes it densely.
"""

from __future__ import annotations

import copy

import lightning as L
import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.hardware.cpu import layer_inputs
from sparsebench.hardware.direct import KernelUnavailable, sparse_rows_op
from sparsebench.hardware.timing import time_interleaved
from sparsebench.hardware.training import SparseKernel, refusal
from sparsebench.hardware.update import SparseUpdate, update_refusal
from sparsebench.sparsity.masks import MaskSet
from sparsebench.sparsity.methods.base import SparsityMethod


def require_kernels(mode: str) -> None:
    """Build the kernels' library now (on first use; cached), before anything is trained or
    recorded: a machine without a C++ compiler gets one sentence."""
    if mode == "off":
        return
    try:
        sparse_rows_op()
    except KernelUnavailable as exc:
        raise ConfigError(
            f"trainer.sparse_kernels={mode} needs the sparse training kernels, but {exc}; "
            "or train with dense kernels: trainer.sparse_kernels=off."
        ) from None


class SparseKernels(L.Callback):
    """Installs the sparse kernels on the chosen layers for the fit and takes them off after."""

    def __init__(self, method: SparsityMethod, mode: str) -> None:
        self.method, self.mode = method, mode
        self.kernels: dict[str, SparseKernel] = {}
        self.choices: dict[str, str] = {}
        self.update: SparseUpdate | None = None
        self.updates = 0  # layer updates made at the nonzeros in the last fit
        self.to_measure: tuple | None = None  # what measure() times, kept by on_train_end
        self.steps: dict[str, dict[str, int]] = {}  # per kernel layer: its steps by how they ran

    def section(self) -> dict:
        """results.json's ``kernels_train``: per masked layer its choice, and per kernel layer
        its training steps by how they ran (sparse, dense, with the dense weight gradient)."""
        return {"layers": dict(self.choices), "steps": dict(self.steps)}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.method.masks is not None
        self.choices = {}
        layers = dict(self.method.masks)
        precision = str(trainer.precision)
        for name, module in layers.items():
            reason = refusal(module)
            if reason is None and trainer.world_size > 1:
                reason = "DDP: the kernels write each gradient themselves, outside its all-reduce"
            if reason is None and precision not in ("32", "32-true"):
                reason = f"precision {precision}: the kernels are float32 kernels"
            self.choices[name] = "sparse" if reason is None else f"dense ({reason})"
        chosen = [n for n, c in self.choices.items() if c == "sparse"]
        if self.mode == "auto" and chosen:
            example = trainer.datamodule.example_input(trainer.datamodule.batch_size)
            inputs = layer_inputs(pl_module.model, chosen, example)
            for name in chosen:
                self.choices[name] = faster(layers[name], inputs[name])
        for name, choice in self.choices.items():
            if choice == "sparse":
                self.kernels[name] = SparseKernel(layers[name])
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        why = "one optimizer" if optimizer is None else update_refusal(optimizer)
        if self.kernels and why is None:
            self.update = SparseUpdate(optimizer, list(self.kernels.values()))
            # Gradient clipping reads weight.grad: then the kept gradient is written there too.
            compact = not trainer.gradient_clip_val
            for kernel in self.kernels.values():
                kernel.compact = compact
        elif self.kernels:
            for name in self.kernels:
                self.choices[name] += f" (optimizer update dense: {why})"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        active = self.method.hard_masks
        dense_grad = self.method.needs_dense_grad(step)
        for kernel in self.kernels.values():
            kernel.active, kernel.dense_grad = active, dense_grad

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, kernel in self.kernels.items():
            kernel.remove()
            self.steps[name] = dict(kernel.steps)
        if self.update is not None:
            self.update.remove()
            self.updates = self.update.updates
        if self.kernels and self.method.hard_masks:  # timed by measure(), after the fit
            self.to_measure = (
                pl_module.model,
                dict(self.method.masks),
                set(self.kernels),
                trainer.optimizers[0],
                trainer.datamodule.example_input(trainer.datamodule.batch_size),
                self.update is not None,
            )
        self.kernels, self.update = {}, None

    def measure(self) -> dict[str, dict]:
        """The last fit's step with its kernels timed against a dense one (:func:`measure_step`)
        as results metrics and tags; empty when no layer took the kernels. Called after the fit,
        so that the timing is not part of ``time/train_s``."""
        if self.to_measure is None:
            return {}
        measured, self.to_measure = measure_step(*self.to_measure), None
        return measured


def faster(module: nn.Module, x: torch.Tensor) -> str:
    """``sparse`` when a training step of ``module`` on ``x`` (forward, input and weight
    gradients) is faster with the sparse kernels, timed interleaved with the dense one."""
    x = x.clone().requires_grad_()  # (captured under inference_mode)
    kernel = SparseKernel(module)
    kernel.remove()  # its forward is called directly below, beside the module's own

    def step(forward) -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        forward(x).sum().backward()

    fns = {
        "dense": lambda: step(kernel.dense),
        "sparse": lambda: step(kernel.forward),
    }
    try:
        timings, _ = time_interleaved(fns, torch.get_num_threads(), 1, 0.05, 0.2)
    finally:
        module.zero_grad(set_to_none=True)  # the timing's gradients are not the run's
    ratio = timings["dense"].p50 / timings["sparse"].p50
    return "sparse" if ratio > 1 else f"dense (the sparse kernels were {ratio:.2f}x here)"


def measure_step(
    model: nn.Module,
    layers: dict[str, nn.Module],
    sparse: set[str],
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    compact: bool,
) -> dict[str, dict]:
    """A training step of ``model`` with the run's kernels against one with dense kernels
    (today's ``off``: masked gradients and weights zeroed around the optimizer's step), each on a
    copy of the trained model with a fresh optimizer of the run's class and settings, timed
    interleaved on the batch's shape with the latency timing's noise rule. Returns results
    metrics and tags: ``speedup/train_measured``, ``time/dense_step_ms``, ``time/sparse_step_ms``
    and whether the timing was noisy."""

    def arm(kernels: bool):
        copy_ = copy.deepcopy(model)
        modules = dict(copy_.named_modules())
        masks = MaskSet.existing({name: modules[name] for name in layers})
        step_optimizer = type(optimizer)(copy_.parameters(), **optimizer.defaults)
        if kernels:
            installed = [SparseKernel(modules[name]) for name in sparse]
            for kernel in installed:
                kernel.compact = compact
            if compact:
                SparseUpdate(step_optimizer, installed)

        def step() -> None:
            step_optimizer.zero_grad(set_to_none=True)
            out = copy_(x)
            getattr(out, "logits", out).float().square().mean().backward()
            masks.mask_grads()
            step_optimizer.step()
            masks.apply()

        return step

    fns = {"dense": arm(False), "sparse": arm(True)}
    timings, noise = time_interleaved(fns, torch.get_num_threads(), 1, 0.5, 2.0)
    dense, sparse_ = timings["dense"].p50, timings["sparse"].p50
    tags = {"train/step_noisy": str(noise.noisy).lower()}
    if noise.noisy:
        tags["train/step_noise"] = "; ".join(noise.reasons)
    return {
        "metrics": {
            "speedup/train_measured": dense / sparse_,
            "time/dense_step_ms": dense * 1e3,
            "time/sparse_step_ms": sparse_ * 1e3,
        },
        "tags": tags,
    }
