"""Structured channel (filter) pruning, gradual, with the physically smaller network measured."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.sparsity.masks import MaskSet
from sparsebench.sparsity.methods.gmp import GradualMagnitudePruning
from sparsebench.sparsity.patterns import Channel
from sparsebench.sparsity.prunable import prunable_layers

log = logging.getLogger(__name__)


def _torch_pruning():
    """Torch-Pruning, imported when a model is traced (it imports timm: seconds at start-up)."""
    import torch_pruning

    return torch_pruning


class ChannelPruning(GradualMagnitudePruning):
    """Filter pruning by filter L2 norm (Li et al., "Pruning Filters for Efficient ConvNets",
    ICLR 2017) on the cubic schedule of Zhu & Gupta (2017), ``sparsity`` being the fraction
    of output channels removed per layer.

    Only layers whose output channels feed nothing else that writes the same channels are
    pruned (e.g. the first conv of a residual block, not convs adding into the residual
    stream): Torch-Pruning's dependency graph (Fang et al., "DepGraph", CVPR 2023) finds them.
    With a channel pruned, its filter, conv bias and the following BatchNorm's weight and bias
    are held at exactly zero, so the channel's activation is exactly zero and removing it
    physically (Torch-Pruning again) leaves the function unchanged; ``flops/sparse`` is the
    physically smaller network's FLOPs.
    """

    kind = "structured"
    patterns = (Channel,)

    def __init__(
        self,
        name: str = "channel",
        sparsity: float = 0.5,
        pattern: str = "channel",
        distribution: str = "uniform",
        **kwargs,
    ) -> None:
        if distribution != "uniform":
            raise ConfigError(
                f"method 'channel' removes the same fraction of channels in every "
                f"layer: method.distribution must be uniform, got '{distribution}'."
            )
        super().__init__(
            name=name, sparsity=sparsity, pattern=pattern, distribution=distribution, **kwargs
        )
        self.norms: dict[str, list[nn.Module]] = {}
        self.example: torch.Tensor | None = None

    def select(self, model: nn.Module, example: torch.Tensor | None = None) -> dict[str, nn.Module]:
        if example is None:
            raise ConfigError("method 'channel' needs an example input to trace the model.")
        self.example = example
        candidates = prunable_layers(model, **self.layer_options)
        tp = _torch_pruning()
        out_handlers = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
        modes = {m: m.training for m in model.modules()}
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=self.example)
        for m, training in modes.items():  # Torch-Pruning's trace leaves the model in eval mode
            m.training = training
        chosen: dict[str, nn.Module] = {}
        for name, module in candidates.items():
            handler = (
                tp.prune_conv_out_channels
                if isinstance(module, nn.Conv2d)
                else tp.prune_linear_out_channels
            )
            group = graph.get_pruning_group(module, handler, idxs=[0])
            writers = [dep.target.module for dep, _ in group if dep.handler in out_handlers]
            if writers == [module]:
                chosen[name] = module
                self.norms[name] = [
                    dep.target.module
                    for dep, _ in group
                    if dep.handler == tp.prune_batchnorm_out_channels
                ]
        chosen = self.runnable(model, chosen)
        if not chosen:
            raise ConfigError(
                f"method '{self.name}' found no layer whose output channels can be removed alone."
            )
        self.norms = {n: ms for n, ms in self.norms.items() if n in chosen}
        return chosen

    def runnable(self, model: nn.Module, chosen: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """The chosen layers whose channel removal leaves a network that still runs: one
        channel of each removed from a copy (all at once; one by one if that fails). A layer
        whose output is reshaped by a count of channels (attention's qkv into heads) fails and
        stays dense, with one warning naming it."""

        def runs(names: list[str]) -> str | None:
            probe = copy.deepcopy(model).eval()
            tp = _torch_pruning()
            try:
                graph = tp.DependencyGraph().build_dependency(probe, example_inputs=self.example)
                for name in names:
                    target = probe.get_submodule(name)
                    handler = (
                        tp.prune_conv_out_channels
                        if isinstance(target, nn.Conv2d)
                        else tp.prune_linear_out_channels
                    )
                    graph.get_pruning_group(target, handler, idxs=[0]).prune()
                with torch.no_grad():
                    probe(self.example)
            except Exception as exc:  # noqa: BLE001 (any failure means: not removable)
                return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None

        if runs(list(chosen)) is None:
            return chosen
        problems = {name: runs([name]) for name in chosen}
        broken = [name for name, problem in problems.items() if problem is not None]
        log.warning(
            "method '%s': %d layer(s) stay dense (%s): removing their output channels "
            "breaks the network (%s).",
            self.name,
            len(broken),
            ", ".join(broken),
            problems[broken[0]],
        )
        return {name: m for name, m in chosen.items() if problems[name] is None}

    def magnitudes(self) -> dict[str, torch.Tensor]:
        # Squared magnitudes: the Channel pattern sums them per filter (ordering = L2 norm).
        return {name: m.weight.detach().pow(2) for name, m in self.masks}

    def rows(self, name: str) -> torch.Tensor:
        """The output channels of a layer its mask keeps."""
        return self.masks.mask(name).reshape(self.masks.layers[name].weight.shape[0], -1)[:, 0]

    def params(self, name: str) -> list[torch.Tensor]:
        """A layer's channel groups, row by row: its filters, conv bias and the following norms'
        weight and bias."""
        module = self.masks.layers[name]
        out = [module.weight, module.bias]
        for norm in self.norms[name]:
            out += [norm.weight, norm.bias]
        return [p for p in out if p is not None]

    @torch.no_grad()
    def zero_channels(self, grads: bool = False) -> None:
        """Hold pruned channels' whole groups at zero (and their gradients): the filters are
        zero by their masks already, the biases and norms by this."""
        for name, _ in self.masks:
            dead = ~self.rows(name)
            for param in self.params(name):
                target = param.grad if grads else param
                if target is not None:
                    target[dead] = 0

    # A pruned channel is more than its filter: its bias and norm are held at zero too.
    def mask_grads(self) -> None:
        super().mask_grads()
        self.zero_channels(grads=True)

    def apply(self) -> None:
        super().apply()
        self.zero_channels()

    def deployed_model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` with the pruned channels physically removed."""
        slim = copy.deepcopy(model).eval()
        MaskSet.detach(slim)  # Torch-Pruning reshapes parameters, not our mask buffers
        tp = _torch_pruning()
        graph = tp.DependencyGraph().build_dependency(slim, example_inputs=self.example)
        for name, _ in self.masks:
            idxs = (~self.rows(name)).nonzero().view(-1).tolist()
            if idxs:
                target = slim.get_submodule(name)
                handler = (
                    tp.prune_conv_out_channels
                    if isinstance(target, nn.Conv2d)
                    else tp.prune_linear_out_channels
                )
                graph.get_pruning_group(target, handler, idxs=idxs).prune()
        return slim
