"""A model as CPU inference runtimes deploy it: BatchNorm folded into the convolution before it.

oneDNN graphs, TorchScript's ``freeze``, XNNPACK and TFLite all fold an inference-mode
BatchNorm into the preceding convolution's weights and bias; Fast Sparse ConvNets (Elsen et al.
2020) time their sparse networks so too. The CPU targets time the dense and the sparse model
both folded, so that ``speedup/measured`` compares kernels, not a BatchNorm one side skips.
Folding keeps a pruned weight's zeros (each output channel is scaled), so the pattern and the
sparsity are unchanged.

Pairs are found on one forward pass (a BatchNorm whose input is the very tensor a Conv2d just
returned); modules called more than once are left alone. The folded model's outputs are
checked against the original's by the caller.
"""

from __future__ import annotations

import collections
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from sparsebench.sparsity.prunable import set_module


def without_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of ``bn`` once its normalisation is folded away: nothing for a plain
    BatchNorm2d; timm's BatchNormAct2d keeps its dropout and activation."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    rest = [
        getattr(bn, name)
        for name in ("drop", "act")
        if isinstance(getattr(bn, name, None), nn.Module)
    ]
    return nn.Sequential(*rest)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with each Conv2d -> BatchNorm2d pair folded (torch's
    ``fuse_conv_bn_eval``), and the number of pairs folded."""
    model = copy.deepcopy(model).eval()
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: list[tuple[str, str]] = []
    calls: collections.Counter[str] = collections.Counter()

    def conv_hook(name):
        def hook(module, args, out):
            calls[name] += 1
            produced[id(out)] = (name, out)

        return hook

    def bn_hook(name):
        def hook(module, args):
            calls[name] += 1
            source = produced.get(id(args[0]))
            if source is not None and source[1] is args[0]:
                pairs.append((source[0], name))

        return hook

    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(conv_hook(name)))
        elif isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
            hooks.append(module.register_forward_pre_hook(bn_hook(name)))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    folded = 0
    for conv_name, bn_name in pairs:
        if calls[conv_name] != 1 or calls[bn_name] != 1:
            continue  # a module used twice: folding would change its other uses
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        with torch.no_grad():
            set_module(model, conv_name, fuse_conv_bn_eval(conv, bn))
        set_module(model, bn_name, without_norm(bn))
        folded += 1
    return model, folded
