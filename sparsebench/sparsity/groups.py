"""Channel groups and their saliency, as Only-Train-Once (OTO) forms and scores them.

A channel group is every parameter slice that must go when one channel goes: the filters of
every Conv/Linear that writes the channel, their biases and the norms after them. In a residual
network the convolutions that add into one stream write the same channels, so the stream is
one group of many layers (Torch-Pruning's dependency graph finds them: Fang et al., "DepGraph:
Towards Any Structural Pruning", CVPR 2023). OTO calls these pruning zero-invariant groups
(Chen et al., "OTOv2: Automatic, Generic, User-Friendly", ICLR 2023); its node groups are the
same sets on the networks we compare (ResNet-18: 12 groups, 2880 channels).

The saliency is OTO's (``only_train_once/optimizer/importance_score``, HESSO: Chen et al.
2024): five criteria per channel from the channel's values x and the optimizer's direction d
(the step it is about to take, not the raw gradient), each divided by its L2 norm over all
channels of all groups, weighted (0.2 each) and summed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

# OTO's default importance_score_criteria (its HESSO and HESSO-CRIC classes).
CRITERIA: dict[str, float] = {
    "magnitude": 0.2,
    "avg_magnitude": 0.2,
    "cosine_similarity": 0.2,
    "taylor_first_order": 0.2,
    "taylor_second_order": 0.2,
}
_SAFE = 1e-8  # OTO's safe_guard, in the same places
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
_WRITERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _torch_pruning():
    """Torch-Pruning, imported when a model is traced (it imports timm: seconds at start-up)."""
    import torch_pruning

    return torch_pruning


@dataclass
class ChannelGroup:
    """Channels that are removed together: ``layers`` (masked Conv/Linear names) write them,
    ``params`` hold them in dim 0 (filters, biases, norms), ``size`` of them."""

    layers: list[str]
    params: list[nn.Parameter]
    size: int
    names: list[str] = field(default_factory=list)  # the params' qualified names

    def rows(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """``values`` (one per param) as (size, -1) matrices, a channel per row."""
        return [v.reshape(self.size, -1) for v in values]


def trace(model: nn.Module, example: torch.Tensor):
    """Torch-Pruning's dependency graph of ``model`` (its trace leaves eval mode: restored)."""
    modes = {m: m.training for m in model.modules()}
    graph = _torch_pruning().DependencyGraph().build_dependency(model, example_inputs=example)
    for m, training in modes.items():
        m.training = training
    return graph


def channel_groups(
    model: nn.Module, example: torch.Tensor, candidates: Mapping[str, nn.Module]
) -> list[ChannelGroup]:
    """The channel groups of ``model`` all of whose writers are ``candidates``, in model order.

    Groups whose channels are re-indexed on the way (concatenations) or held by parameters we
    do not slice by rows (transposed convs, bare Parameters such as a ViT's position
    embedding) are left out: OTO handles those with auxiliary groups; we say so in one line.
    """
    graph = trace(model, example)
    names = {m: n for n, m in model.named_modules()}
    chosen = set(map(id, candidates.values()))
    ignored = [m for m in model.modules() if isinstance(m, _WRITERS) and id(m) not in chosen]
    order = {n: i for i, n in enumerate(names.values())}
    groups, skipped = [], []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=_WRITERS):
        root = list(group[0].idxs)
        layers, params, param_names, fits = [], [], [], True
        for item in group:
            module = item.dep.target.module
            if not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            if not isinstance(module, nn.Module):
                fits = False  # a bare Parameter (a ViT's position embedding)
                break
            owned = list(module.named_parameters(recurse=False))
            if not owned:
                continue  # an element-wise op, a reshape: no parameters
            if (
                not isinstance(module, (*_WRITERS, *_NORMS))
                or module not in names
                or list(item.idxs) != root
            ):
                fits = False
                break
            if isinstance(module, _WRITERS):
                layers.append(names[module])
            for n, p in owned:
                if p.shape[0] != len(root):
                    fits = False
                params.append(p)
                param_names.append(f"{names[module]}.{n}")
        if not fits or not layers:
            skipped.append(names.get(group[0].dep.target.module, "?"))
            continue
        layers.sort(key=order.__getitem__)
        groups.append(ChannelGroup(layers, params, len(root), param_names))
    if skipped:
        log.warning(
            "%d channel group(s) stay dense (rooted at %s): their channels are re-indexed or "
            "held by parameters that are not sliced by rows.",
            len(skipped),
            ", ".join(skipped),
        )
    groups.sort(key=lambda g: order[g.layers[0]])
    return groups


def remove_channels(
    model: nn.Module, example: torch.Tensor, groups: list[ChannelGroup], kept: list[torch.Tensor]
) -> None:
    """Remove from ``model`` (in place) each group's channels that ``kept`` does not keep,
    consumers' input channels included (Torch-Pruning)."""
    tp = _torch_pruning()
    graph = trace(model, example)
    for group, keep in zip(groups, kept, strict=True):
        idxs = (~keep).nonzero().view(-1).tolist()
        if idxs:
            target = model.get_submodule(group.layers[0])
            handler = (
                tp.prune_linear_out_channels
                if isinstance(target, nn.Linear)
                else tp.prune_conv_out_channels
            )
            graph.get_pruning_group(target, handler, idxs=idxs).prune()


# -- the optimizer's direction ----------------------------------------------------------------------
def direction(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> torch.Tensor | None:
    """The step direction ``optimizer`` is about to take for ``param`` (its update is
    ``-lr x direction``, decoupled weight decay aside), from the gradient just computed and the
    optimizer's state before the step, without changing that state; None without a gradient.

    OTO's ``compute_grad_variant``: SGD's momentum buffer after this gradient (weight decay
    folded in first), Adam's bias-corrected m / (sqrt(v) + eps). Where OTO's own optimizer and
    torch's differ (Nesterov; Adam's first step, where OTO's buffers start at g and g^2 rather
    than (1 - beta) g and (1 - beta) g^2), this follows torch's, which is the one that trains."""
    if param.grad is None:
        return None
    grad = param.grad.detach()
    if optimizer is None:
        return grad.clone()
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    state = optimizer.state.get(param, {})
    if group.get("maximize", False):
        grad = -grad
    if isinstance(optimizer, torch.optim.SGD):
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * param.detach()
        momentum = group["momentum"]
        if not momentum:
            return grad.clone()
        buf = state.get("momentum_buffer")
        buf = grad.clone() if buf is None else momentum * buf + (1 - group["dampening"]) * grad
        return grad + momentum * buf if group["nesterov"] else buf
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        decoupled = isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay")
        if group["weight_decay"] and not decoupled:
            grad = grad + group["weight_decay"] * param.detach()
        beta1, beta2 = group["betas"]
        step = float(state["step"]) + 1 if "step" in state else 1.0
        m = state.get("exp_avg", torch.zeros_like(grad)) * beta1 + (1 - beta1) * grad
        v = state.get("exp_avg_sq", torch.zeros_like(grad)) * beta2 + (1 - beta2) * grad * grad
        if group.get("amsgrad"):
            v = torch.maximum(state.get("max_exp_avg_sq", v), v)
        m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
        return m_hat / (v_hat.sqrt() + group["eps"])
    raise TypeError(f"no direction for {type(optimizer).__name__}")  # refused at config time


# -- OTO's five criteria ----------------------------------------------------------------------------
def criteria(group: ChannelGroup, directions: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """OTO's raw scores of each channel of ``group`` (``directions``: one per param)."""
    values = group.rows([p.detach() for p in group.params])
    norm2 = sum(v.pow(2).sum(1) for v in values)
    width = sum(v.shape[1] for v in values)
    pairs = [
        (v, d.reshape(group.size, -1))
        for v, d in zip(values, directions, strict=True)
        if d is not None
    ]
    zero = torch.zeros(group.size)
    inner = sum((v * d).sum(1) for v, d in pairs) if pairs else zero
    dnorm2 = sum(d.pow(2).sum(1) for _, d in pairs) if pairs else zero
    pnorm2 = sum(v.pow(2).sum(1) for v, _ in pairs) if pairs else zero  # params with a direction
    magnitude = norm2.sqrt()
    return {
        "magnitude": magnitude,
        "avg_magnitude": magnitude / float(width + 1e-6),
        "cosine_similarity": inner / (pnorm2.sqrt() + _SAFE) / (dnorm2.sqrt() + _SAFE) + 1,
        "taylor_first_order": inner.abs(),
        "taylor_second_order": 0.5 * inner.pow(2),
    }


def saliency(
    raw: list[dict[str, torch.Tensor]], weights: Mapping[str, float] = CRITERIA
) -> list[torch.Tensor]:
    """Per group, each channel's overall score: every criterion over its L2 norm across all
    channels of all groups (OTO's ``compute_importance_scores``), weighted and summed."""
    out = [torch.zeros_like(next(iter(r.values()))) for r in raw]
    for name, weight in weights.items():
        present = [r[name] for r in raw if name in r]
        denom = (_SAFE + sum(float(s.pow(2).sum()) for s in present)) ** 0.5 + _SAFE
        for total, r in zip(out, raw, strict=True):
            if name in r:
                total += r[name] * (weight / denom)
    return out
