"""The run's measurements once it is trained: the last validation, the contract's model metrics
(parameters, sparsity, FLOPs, storage) and the hardware target's measured latency and per-layer
kernels, written into the run's :class:`Results`."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from sparsebench.config.schemas import task_of
from sparsebench.errors import RunDiverged
from sparsebench.hardware.base import HardwareTarget, Measurement, per_token
from sparsebench.metrics.flops import flops_per_sample
from sparsebench.metrics.params import actual_sparsity, count_params
from sparsebench.metrics.size import model_bytes
from sparsebench.models.language import DecodeStep
from sparsebench.record.results import Results
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.prunable import prunable_layers
from sparsebench.training.build import Run
from sparsebench.transforms.base import ModelTransform


def final_val(trainer: L.Trainer, results: Results) -> dict[str, float]:
    """The last validation's ``val/*``: from the trainer, or (a resumed run whose training had
    already ended) from the last epoch row of the record."""
    found = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not found and results.history:
        found = {k: v for k, v in results.history[-1].items() if k.startswith("val/")}
    return found


def check_finite(metrics: dict[str, float]) -> None:
    """A non-finite test loss or accuracy means the trained model diverged."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        raise RunDiverged(
            f"the trained model gives {', '.join(f'{k}={v}' for k, v in bad.items())}"
        )


def model_metrics(
    model: nn.Module,
    example: torch.Tensor,
    samples_seen: int,
    method: SparsityMethod | None = None,
    hardware: HardwareTarget | None = None,
    transform: ModelTransform | None = None,
    deployed: nn.Module | None = None,
    per: int = 1,
) -> dict[str, float]:
    """Parameters, sparsity, FLOPs and weight storage of the trained model (``deployed``: the
    method's physically smaller network where the caller built it already). FLOPs are per
    sample, or per token of a language model's window (``per``: its tokens; ``samples_seen``
    then counts tokens).

    Sparsity and sparse FLOPs are over the method's layers (default selection when dense);
    ``flops/train`` follows docs/methods.md: 3 forward FLOPs per training sample for dense
    training, the method's own accounting otherwise. Storage is in the hardware target's format.
    """
    layers = pruned_layers(model, method)

    def counted(net: nn.Module, selection: dict | None = None) -> dict[str, float]:
        return {k: v / per for k, v in flops_per_sample(net, example, selection).items()}

    flops = counted(model, layers)
    # Training FLOPs use the trained network's own dense FLOPs: RigL's dense gradient (f_D)
    # is computed on the network that is trained, e.g. Sparse-IFT's widened one.
    trained_dense = flops["flops/dense"]
    if transform is not None and transform.reference_flops is not None:
        # Sparse-IFT and Monarch: flops/dense is the dense original (the iso-FLOP reference).
        flops["flops/dense"] = transform.reference_flops / per
    if deployed is None and method is not None:
        deployed = method.deployed_model(model)
    if deployed is not None:  # structured: count the physically smaller network
        flops["flops/sparse"] = counted(deployed)["flops/dense"]
        flops["params/deployed"] = sum(p.numel() for p in deployed.parameters())
    train = (
        method.train_flops(trained_dense, flops["flops/sparse"], samples_seen)
        if method is not None
        else 3 * trained_dense * samples_seen
    )
    size = (
        hardware.size(model, layers, method.pattern if method is not None else None)
        if hardware is not None
        else model_bytes(model, layers, "dense")
    )
    return {
        **count_params(model),
        "sparsity/target": method.target_sparsity if method is not None else 0.0,
        "sparsity/actual": actual_sparsity(model, layers),
        **flops,
        "flops/train": train,
        "speedup/theoretical": flops["flops/dense"] / flops["flops/sparse"],
        **size,
    }


def measure(
    results: Results, run: Run, model: nn.Module, samples_seen: int, benchmark: bool
) -> None:
    """The contract's model metrics into ``results`` and, if ``benchmark`` (rank zero), the
    hardware target's latencies and its per-layer kernel choice."""
    method, hardware = run.method, run.hardware
    example = run.datamodule.example_input(1)
    # Structured methods: the physically smaller network, counted and timed (built once).
    deployed = method.deployed_model(model) if method is not None else None
    per = example.shape[1] if task_of(run.cfg) == "language_modeling" else 1
    results.update(
        model_metrics(model, example, samples_seen, method, hardware, run.transform, deployed, per)
    )
    if not (hardware.enabled and benchmark):
        return
    layers = pruned_layers(model, method)
    pattern = method.pattern if method is not None else None

    def timed(step: Callable[[nn.Module], nn.Module] = lambda m: m) -> Measurement:
        """The target's measurement of the model (or of the ``step`` built from it)."""
        if deployed is not None:  # the smaller network, timed against the full one
            measured = hardware.benchmark(step(deployed), example, {}, None, dense=step(model))
            measured.kernels = dict.fromkeys(layers, "dense (channels removed)")
            return measured
        return hardware.benchmark(step(model), example, layers, pattern)

    measured = timed()
    results.update(measured.metrics, measured.tags)  # tags: latency/noisy (and why)
    results.attach("kernels", measured.kernels)  # per-layer kernel the target ran
    if per > 1:  # a language model: its window of `per` tokens is the prefill
        decode = timed(DecodeStep)  # one generated token with a KV cache
        tokens = per_token(measured, decode, per)
        results.update(tokens.metrics, tokens.tags)
        results.attach("kernels_decode", tokens.kernels)


def pruned_layers(model: nn.Module, method: SparsityMethod | None) -> dict[str, nn.Module]:
    """The method's layers, or the default prunable selection for dense training."""
    if method is not None and method.masks is not None:
        return method.masks.layers
    return prunable_layers(model)
