"""Post-training pruning methods for ``runner=prune``: Wanda, SparseGPT and DSnoT (and the
training method ``magnitude``, which the prune runner applies once to the trained weights).

Each is a :class:`SparsityMethod` (a mask policy) so that layer selection (stem and head dense
by default, include/exclude), patterns (unstructured, N:M or blocks, ``method.pattern``), masks and the
results contract are the training methods' own; :meth:`PostTrainingMethod.prune_layer` is the per-layer algorithm
(sparsebench.pruning.algorithms) and :meth:`PostTrainingMethod.prune` the layer-by-layer pass.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.pruning import algorithms
from sparsebench.pruning.calibrate import (
    LayerStats,
    block_inputs,
    block_outputs,
    block_stats,
    collect,
    reconstruction_error,
)
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.patterns import NM, Block, Unstructured, as_matrix, from_matrix

log = logging.getLogger(__name__)


class PostTrainingMethod(SparsityMethod):
    """Base: ``calibration_samples`` inputs from the training split drive the pruning."""

    needs_gram = False  # SparseGPT needs X^T X; the error report uses it when present
    kind = "post_training"

    #: distributions the method accepts (per-layer algorithms prune every layer at sparsity)
    distributions: tuple[str, ...] = ("uniform",)
    patterns = (Unstructured, NM, Block)

    def __init__(
        self,
        name: str,
        sparsity: float = 0.5,
        calibration_samples: int = 128,
        finetune_epochs: int = 0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("distribution", "uniform")
        super().__init__(name=name, sparsity=sparsity, **kwargs)
        if int(finetune_epochs) < 0:
            raise ConfigError(f"method.finetune_epochs must be >= 0, got {finetune_epochs}.")
        self.finetune_epochs = int(finetune_epochs)
        self.dense_train_flops = 0.0  # set by the runner when it trained the dense model
        if self.distribution not in self.distributions:
            raise ConfigError(
                f"method '{name}' takes method.distribution {' or '.join(self.distributions)}; "
                f"got '{self.distribution}'."
            )
        if int(calibration_samples) < 1:
            raise ConfigError(
                f"method.calibration_samples must be >= 1, got {calibration_samples}."
            )
        self.calibration_samples = int(calibration_samples)
        self.errors: dict[str, dict[str, float]] = {}

    @property
    def density(self) -> float:
        """The fraction kept per layer (N:M: n/m)."""
        return 1.0 - self.target_sparsity

    def select(self, model: nn.Module, example: torch.Tensor | None = None) -> dict[str, nn.Module]:
        grouped = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        if grouped:  # unfolded inputs describe ungrouped convolutions only
            self.narrow(exclude=grouped)
        return super().select(model, example)

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        """The dense training (when this run did it) plus the fine-tuning with masks fixed."""
        return self.dense_train_flops + 3 * sparse_flops * samples

    def prune_layer(self, weight: torch.Tensor, stats: LayerStats):
        """(new weight or None, keep-mask) of one layer, both out x in."""
        raise NotImplementedError

    @torch.no_grad()
    def prune(
        self, model: nn.Module, batches: list[torch.Tensor], device: str | None = None
    ) -> None:
        """Prune every selected layer, each seeing the already pruned layers' outputs: block
        by block where the model has blocks (``model.blocks()``), else layer by layer.
        ``device`` (``cuda``): the model is moved there to be pruned (it must fit in the
        device's memory) and back where it was."""
        assert self.masks is not None
        home = next(model.parameters()).device
        if device is not None and torch.device(device) != home:
            model.to(device)
            try:
                self.prune(model, [b.to(device) for b in batches])
            finally:
                model.to(home)
            return
        model.eval()
        layers = dict(self.masks)
        blocks = list(model.blocks()) if hasattr(model, "blocks") else []
        if blocks:
            calls = block_inputs(model, blocks[0], batches)
            for block in blocks:
                inside = {id(m) for m in block.modules()}
                chosen = {n: m for n, m in layers.items() if id(m) in inside}
                stats = block_stats(block, chosen, calls, gram=True)
                for name, module in chosen.items():
                    self._prune_one(name, module, stats[name])
                    del layers[name]
                calls = block_outputs(block, calls)
            del calls
        for name, module in layers.items():  # outside every block (or no blocks at all)
            self._prune_one(name, module, collect(model, module, batches, gram=True))

    def _prune_one(self, name: str, module: nn.Module, stats: LayerStats) -> None:
        weight = as_matrix(module.weight.detach())
        new_weight, keep = self.prune_layer(weight, stats)
        pruned = (new_weight if new_weight is not None else weight) * keep
        self.errors[name] = {
            "magnitude": reconstruction_error(
                weight,
                weight * algorithms.magnitude(weight, self.pattern, self.density),
                stats.gram,
            ),
            self.name: reconstruction_error(weight, pruned, stats.gram),
        }
        if new_weight is not None:
            module.weight.copy_(from_matrix(new_weight, module.weight.shape))
        self.masks.set(name, from_matrix(keep, module.weight.shape))
        self.masks.apply()
        log.info("%s: %s kept %.3f", self.name, name, float(keep.float().mean()))


class Wanda(PostTrainingMethod):
    """|W| x ||X||_2 per output row (Sun et al., ICLR 2024)."""

    def __init__(self, name: str = "wanda", **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def prune_layer(self, weight, stats):
        return None, algorithms.wanda(weight, stats.norm, self.pattern, self.density)


class SparseGPT(PostTrainingMethod):
    """OBS-style pruning with inverse-Hessian error compensation (Frantar & Alistarh, 2023)."""

    needs_gram = True

    def __init__(
        self, name: str = "sparsegpt", block_size: int = 128, damp: float = 0.01, **kwargs
    ) -> None:
        super().__init__(name=name, **kwargs)
        if int(block_size) < 1:
            raise ConfigError(f"method.block_size must be >= 1, got {block_size}.")
        if damp <= 0:
            raise ConfigError(f"method.damp must be > 0, got {damp}.")
        self.block_size, self.damp = int(block_size), float(damp)

    def prune_layer(self, weight, stats):
        return algorithms.sparsegpt(
            weight, stats.gram, self.pattern, self.density, self.block_size, self.damp
        )


class DSnoT(PostTrainingMethod):
    """Training-free prune-and-grow from a Wanda or magnitude mask (Zhang et al., ICLR 2024)."""

    def __init__(
        self,
        name: str = "dsnot",
        start: str = "wanda",
        threshold: float = 0.1,
        max_cycles: int = 50,
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if start not in ("wanda", "magnitude"):
            raise ConfigError(f"method.start must be wanda or magnitude, got '{start}'.")
        if threshold < 0 or int(max_cycles) < 1:
            raise ConfigError(
                f"method.threshold must be >= 0 and method.max_cycles >= 1, got {threshold} "
                f"and {max_cycles}."
            )
        self.start, self.threshold, self.max_cycles = start, float(threshold), int(max_cycles)

    def prune_layer(self, weight, stats):
        pattern, density = self.pattern, self.density
        if self.start == "wanda":
            keep = algorithms.wanda(weight, stats.norm, pattern, density)
        else:
            keep = algorithms.keep_top(weight.abs(), pattern, density, per_row=True)
        return None, algorithms.dsnot(
            weight, keep, stats.mean, stats.norm, pattern, self.threshold, self.max_cycles
        )


class OneShotMagnitude(PostTrainingMethod):
    """The smallest |W| removed once from the trained weights: per layer (``uniform``) or
    with one threshold over all layers (``global``); no calibration data (Han et al. 2015)."""

    distributions = ("uniform", "global")

    def __init__(self, name: str = "oneshot_magnitude", **kwargs) -> None:
        kwargs.setdefault("calibration_samples", 1)
        super().__init__(name=name, **kwargs)

    @torch.no_grad()
    def prune(
        self, model: nn.Module, batches: list[torch.Tensor], device: str | None = None
    ) -> None:
        """Weights alone decide: no data, and nothing to move to ``device``."""
        assert self.masks is not None
        if self.distribution == "global":
            self.prune_by(self.magnitudes())  # one threshold: the base class's global spread
        else:
            for name, module in self.masks:
                keep = algorithms.magnitude(
                    as_matrix(module.weight.detach()), self.pattern, self.density
                )
                self.masks.set(name, from_matrix(keep, module.weight.shape))
        self.masks.apply()
