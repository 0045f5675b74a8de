"""The sparsity-method interface: a mask policy with a few narrow hooks, no Lightning in it.

A method owns a :class:`MaskSet` over the model's prunable layers and decides which weights are
kept: which layers (stem and head dense by default, include/exclude), the pattern, how the total
sparsity is spread over layers (the distribution), and when masks change (a
:class:`~sparsebench.sparsity.schedules.Schedule`). The training layer's one callback
(``sparsebench.training.callback.SparsityCallback``) calls the hooks:

- ``init_masks()``: at fit start (default: dense, all ones);
- ``update_due(step)`` / ``update(step)``: mask changes on chosen steps (before the forward);
- ``observe_loss(step, loss)``: the step's training loss, before its backward;
- ``after_backward(step)``: gradient-time work (RigL's growth) before gradients are masked;
- ``after_step(step)``: after the optimizer step, before masked weights are zeroed again (ISS-P);
- ``finalize()``: at the end of training (soft methods hard-prune here).

What differs between methods is declared, not coded as Lightning hooks: ``hard_masks`` (False
while a straight-through or soft method's parametrization computes the forward from dense
weights), :meth:`apply` / :meth:`mask_grads` (channel pruning zeroes a pruned channel's bias
and norm too), ``fit_strategy`` (IMP's rounds and soups' phases are fit strategies of the
training layer), and ``state_dict`` (what a checkpoint must carry to resume).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.sparsity.distributions import DISTRIBUTIONS, layer_densities
from sparsebench.sparsity.masks import MaskSet
from sparsebench.sparsity.patterns import Pattern, parse_pattern, pattern_label
from sparsebench.sparsity.prunable import prunable_layers
from sparsebench.sparsity.schedules import Schedule, check_fraction


class SparsityMethod:
    """Base class: which layers, what pattern, how the total sparsity is spread, when."""

    #: What the method is, for the runners and :func:`sparsebench.config.targets.list_methods`:
    #: ``training`` (masks while training), ``structured`` (whole units removed: a physically
    #: smaller network) or ``post_training`` (prunes a trained model once: runner=prune).
    kind: str = "training"
    #: Methods whose masks exist from the first step train sparse from scratch (3*f_s per step).
    sparse_from_start: bool = False
    #: True, or the sentence saying why a killed run of this method cannot continue mid-way.
    resumable: bool | str = True
    #: How training is driven: ``single`` (one fit), ``rounds`` (IMP) or ``soups``; the
    #: strategies live in sparsebench.training.strategies.
    fit_strategy: str = "single"
    #: Patterns the method can produce; None: any.
    patterns: tuple[type[Pattern], ...] | None = None
    #: The optimizers (``_target_``) a method that reads the optimizer's state works with;
    #: None: any (checked when the config is validated).
    optimizers: tuple[str, ...] | None = None

    def __init__(
        self,
        name: str,
        sparsity: float = 0.9,
        distribution: str = "uniform",
        erk_power: float = 1.0,
        pattern: str = "unstructured",
        dense_stem: bool = True,
        dense_head: bool = True,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        check_fraction("sparsity", sparsity)
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(
                f"method.distribution must be one of {', '.join(DISTRIBUTIONS)}, got '{distribution}'."
            )
        if erk_power <= 0:
            raise ConfigError(f"method.erk_power must be > 0, got {erk_power}.")
        self.name = name
        self.sparsity = sparsity
        self.distribution = distribution
        self.erk_power = erk_power
        self.pattern: Pattern = parse_pattern(pattern)
        if self.patterns is not None and not isinstance(self.pattern, self.patterns):
            allowed = ", ".join(sorted({p.kind for p in self.patterns}))
            raise ConfigError(
                f"method '{name}' produces {allowed} sparsity; "
                f"method.pattern={self.pattern.label} is not one of them."
            )
        self.layer_options = {
            "dense_stem": dense_stem,
            "dense_head": dense_head,
            "include": tuple(include),
            "exclude": tuple(exclude),
        }
        self.seed = seed
        self.masks: MaskSet | None = None
        self.schedule = Schedule()
        self.optimizer: torch.optim.Optimizer | None = None
        self.finalized = False

    # -- set-up -------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    def bind(self, total_steps: int) -> None:
        """The run's length in optimizer steps is known: fix the schedule's steps."""
        self.schedule = self.schedule.bind(total_steps)

    def narrow(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        """Restrict the layers (a model transformation keeps its dense parts out)."""
        options = self.layer_options
        self.layer_options = {
            **options,
            "include": options["include"] or tuple(include),
            "exclude": (*options["exclude"], *exclude),
        }

    @property
    def target_sparsity(self) -> float:
        """The sparsity this method reaches over its layers by the end of training."""
        fixed = self.pattern.fixed_density()
        return 1.0 - fixed if fixed is not None else self.sparsity

    def select(self, model: nn.Module, example: torch.Tensor | None = None) -> dict[str, nn.Module]:
        """The layers this method prunes (``example``: an input batch, for methods that trace)."""
        return prunable_layers(model, **self.layer_options)

    def attach(self, model: nn.Module, example: torch.Tensor | None = None) -> MaskSet:
        """Select the prunable layers, check the pattern fits them, attach all-ones masks."""
        layers = self.select(model, example)
        if not layers:
            raise ConfigError(
                "no prunable layers were selected; check method.include and method.exclude."
            )
        for name, module in layers.items():
            self.pattern.check(name, module.weight.shape)
        self.masks = MaskSet(layers)
        return self.masks

    def densities(
        self, scores: dict[str, torch.Tensor] | None = None, sparsity: float | None = None
    ) -> dict[str, float]:
        """Per-layer densities for ``sparsity`` (default: the target) under the distribution."""
        assert self.masks is not None
        fixed = self.pattern.fixed_density()
        if fixed is not None:
            return {name: fixed for name, _ in self.masks}
        shapes = {name: m.weight.shape for name, m in self.masks}
        target = self.sparsity if sparsity is None else sparsity
        if self.distribution == "global" and scores is not None:
            # One threshold over the pattern's units: score each unit, then spread.
            return layer_densities(shapes, target, "global", scores=scores)
        return layer_densities(shapes, target, self.distribution, self.erk_power)

    def prune_by(self, scores: dict[str, torch.Tensor], sparsity: float | None = None) -> None:
        """Set every mask to the top-scoring weights at the distribution's densities."""
        assert self.masks is not None
        densities = self.densities(scores, sparsity)
        for name, _ in self.masks:
            self.masks.set(name, self.pattern.mask(scores[name], densities[name]))

    def magnitudes(self) -> dict[str, torch.Tensor]:
        assert self.masks is not None
        return {name: m.weight.detach().abs() for name, m in self.masks}

    def generator(self, step: int) -> torch.Generator:
        """A generator seeded by (seed, step): identical on every DDP rank."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step)

    # -- hooks for subclasses -----------------------------------------------------------------
    def init_masks(self) -> None:
        """Masks at the start of training; the default trains dense until the first update."""

    def update_due(self, step: int) -> bool:
        return False

    def update(self, step: int) -> None:
        """Change masks before the forward pass of ``step``."""

    def observe_loss(self, step: int, loss: torch.Tensor) -> None:
        """The training loss of ``step``'s forward, before its backward (HESSO-CRIC reads it)."""

    def after_backward(self, step: int) -> None:
        """Gradient-time work on ``step`` before gradients are masked."""

    def needs_dense_grad(self, step: int) -> bool:
        """Whether :meth:`after_backward` of ``step`` reads the gradient of masked weights (the
        sparse training kernels then compute it densely on that step)."""
        return False

    def after_step(self, step: int) -> None:
        """After the optimizer step that brought the run to ``step``, before :meth:`apply`."""

    def finalize(self) -> None:
        """End of training (soft methods hard-prune here)."""

    # -- what masking means for this method ------------------------------------------------------
    @property
    def hard_masks(self) -> bool:
        """Whether masked weights and their gradients are zeroed every step (soft and
        straight-through methods: not while their parametrization computes the forward)."""
        return True

    def apply(self) -> None:
        """Zero the masked weights (after every optimizer step)."""
        assert self.masks is not None
        self.masks.apply()

    def mask_grads(self) -> None:
        """Zero the gradients of masked weights (before every optimizer step)."""
        assert self.masks is not None
        self.masks.mask_grads()

    def ensure_finalized(self) -> None:
        """Finalize once: at the end of training, or for a resumed run whose checkpoint was
        written after the last epoch (Lightning skips the finished loop)."""
        if not self.finalized and self.masks is not None:
            self.finalize()
            self.apply()
            self.finalized = True

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint carries besides the masks (model buffers) to resume the method."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # -- reporting ------------------------------------------------------------------------------
    @property
    def pattern_tag(self) -> str:
        """The ``pattern`` tag of this method's runs (one derivation, from the built method)."""
        return pattern_label(self.pattern)

    def deployed_model(self, model: nn.Module) -> nn.Module | None:
        """A physically smaller network (structured methods), else None."""
        return None

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        """Training FLOPs of the run (Sparse-IFT's accounting); dense-then-prune counts dense."""
        per_sample = 3 * sparse_flops if self.sparse_from_start else 3 * dense_flops
        return per_sample * samples
