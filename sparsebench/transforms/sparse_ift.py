"""Sparse Iso-FLOP Transformations (Saxena et al., "Sparse-IFT: Sparse Iso-FLOP Transformations
for Maximizing Training Efficiency", ICML 2024).

Each family replaces a dense layer by a sparse construction with the same FLOPs at sparsity s
(uniform over the sparse parts), so the comparison with the dense original is at equal FLOPs:
- ``sparse_wide``: every width scaled by k ~ sqrt(1/(1-s)); k is binary-searched so that the
  whole network's sparse FLOPs equal the dense original's (stem and head stay dense).
- ``sparse_parallel``: B = 1/(1-s) parallel sparse copies of a layer, each with its own norm,
  summed before the activation.
- ``sparse_factorized``: a sparse k x k conv to d channels, then a sparse 1x1 conv to c_out,
  d = k^2 c_in c_out / ((1-s)(k^2 c_in + c_out)).
- ``sparse_doped``: the sparse layer plus a dense low-rank path V U of rank
  r = s k^2 c_in c_out / (k^2 c_in + c_out).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import fx, nn

from sparsebench.errors import ConfigError
from sparsebench.metrics.flops import module_flops
from sparsebench.sparsity.prunable import prunable_layers, set_module
from sparsebench.transforms.base import ModelTransform, mlp_blocks

FAMILIES = ("sparse_wide", "sparse_parallel", "sparse_factorized", "sparse_doped")
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
LOWRANK = "lowrank"  # name of the dense low-rank part of doped layers (never pruned)


def _like(layer: nn.Module, c_in: int, c_out: int, kernel: bool, bias: bool) -> nn.Module:
    """A layer of ``layer``'s kind: the original kernel/stride/padding, or a 1x1 (kernel=False)."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(c_in, c_out, bias=bias)
    if kernel:
        return nn.Conv2d(
            c_in, c_out, layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=bias
        )
    return nn.Conv2d(c_in, c_out, 1, bias=bias)


def _dims(layer: nn.Module) -> tuple[int, int, int]:
    """(c_in, c_out, k^2) of a Linear (k^2 = 1) or ungrouped Conv2d."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features, 1
    return layer.in_channels, layer.out_channels, layer.kernel_size[0] * layer.kernel_size[1]


class Parallel(nn.Module):
    """Sum of parallel branches (layer -> own norm)."""

    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


class Factorized(nn.Module):
    """u (the original kernel, c_in -> d), optional norm and activation, v (1x1, d -> c_out)."""

    def __init__(self, u: nn.Module, v: nn.Module, mid: nn.Module) -> None:
        super().__init__()
        self.u, self.mid, self.v = u, mid, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.mid(self.u(x)))


class Doped(nn.Module):
    """The sparse layer plus a dense low-rank path (``lowrank`` = v(u(x)))."""

    def __init__(self, sparse: nn.Module, u: nn.Module, v: nn.Module) -> None:
        super().__init__()
        self.sparse = sparse
        self.lowrank = nn.Sequential(u, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sparse(x) + self.lowrank(x)


def _following_norms(model: nn.Module, names: list[str]) -> dict[str, str]:
    """Map layer -> the norm module that alone consumes its output (traced with torch.fx)."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # untraceable models: no norms are moved into branches
        return {}
    modules = dict(model.named_modules())
    found = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in names and len(node.users) == 1:
            (user,) = node.users
            if user.op == "call_module" and isinstance(modules.get(user.target), NORMS):
                found[node.target] = user.target
    return found


def transform_layers(
    model: nn.Module,
    layers: dict[str, nn.Module],
    family: str,
    sparsity: float,
    activation: Callable[[], nn.Module] = nn.ReLU,
    token_norm: bool = False,
) -> list[str]:
    """Replace each of ``layers`` in ``model`` by ``family``'s construction; returns a description
    per layer (old -> new shape). ``sparse_wide`` is a whole-model change: see :func:`widen`.
    Factorized layers get BatchNorm and ``activation`` between U and V, or LayerNorm for
    Linear layers on token sequences (``token_norm``, vision transformers)."""
    if family not in FAMILIES or family == "sparse_wide":
        raise ConfigError(
            f"unknown per-layer family '{family}'; available: {', '.join(FAMILIES[1:])}."
        )
    eligible = {
        n: m
        for n, m in layers.items()
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
    }
    if not eligible:
        raise ConfigError(
            "the model has no transformable layers (ungrouped Conv2d or Linear outside stem and head)."
        )
    norms = _following_norms(model, list(eligible)) if family == "sparse_parallel" else {}
    notes = []
    for name, layer in eligible.items():
        c_in, c_out, k2 = _dims(layer)
        bias = getattr(layer, "bias", None) is not None
        if family == "sparse_parallel":
            count = round(1 / (1 - sparsity))
            norm = model.get_submodule(norms[name]) if name in norms else None
            branches = []
            for _ in range(count):
                conv = _like(layer, c_in, c_out, kernel=True, bias=bias)
                branches.append(
                    nn.Sequential(conv, _clone_norm(norm)) if norm is not None else conv
                )
            set_module(model, name, Parallel(branches))
            if norm is not None:
                set_module(model, norms[name], nn.Identity())
            notes.append(
                f"{name}: {c_in}->{c_out} as {count} parallel sparse branches"
                + (" (own norms)" if norm else "")
            )
        elif family == "sparse_factorized":
            d = max(1, round(k2 * c_in * c_out / ((1 - sparsity) * (k2 * c_in + c_out))))
            mid = nn.Sequential(_norm_for(layer, d, token_norm), activation())
            set_module(
                model,
                name,
                Factorized(
                    _like(layer, c_in, d, True, False), _like(layer, d, c_out, False, bias), mid
                ),
            )
            notes.append(f"{name}: {c_in}->{c_out} as sparse {c_in}->{d}->{c_out}")
        else:  # sparse_doped
            r = max(1, round(sparsity * k2 * c_in * c_out / (k2 * c_in + c_out)))
            set_module(
                model,
                name,
                Doped(
                    _like(layer, c_in, c_out, True, bias),
                    _like(layer, c_in, r, True, False),
                    _like(layer, r, c_out, False, False),
                ),
            )
            notes.append(f"{name}: {c_in}->{c_out} sparse + dense rank {r}")
    return notes


def _clone_norm(norm: nn.Module) -> nn.Module:
    """A fresh norm of the same kind and size (its own statistics and affine parameters)."""
    fresh = copy.deepcopy(norm)
    fresh.reset_parameters()
    return fresh


def _norm_for(layer: nn.Module, channels: int, token_norm: bool) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return nn.LayerNorm(channels) if token_norm else nn.BatchNorm1d(channels)
    return nn.BatchNorm2d(channels)


def widen(
    build: Callable[[float], nn.Module],
    sparse_flops: Callable[[nn.Module], float],
    dense_flops: float,
    low: float = 1.0,
    high: float = 8.0,
    tolerance: float = 0.01,
    device: str = "meta",
) -> tuple[nn.Module, float]:
    """Binary-search the width factor k so the widened model's sparse FLOPs match ``dense_flops``.

    ``build(k)`` makes the model at width factor k; ``sparse_flops(model)`` counts its FLOPs with
    the sparse layers at their density (stem and head dense), as the Sparse-IFT code does. The
    search builds candidates on ``device`` (the meta device: shapes only, no memory), then the
    chosen one.
    """
    best: tuple[float, float] | None = None
    for _ in range(30):
        k = (low + high) / 2
        with torch.device(device):
            flops = sparse_flops(build(k))
        error = (flops - dense_flops) / dense_flops
        if best is None or abs(error) < abs(best[0]):
            best = (error, k)
        if abs(error) <= tolerance / 4:
            break
        if error < 0:
            low = k
        else:
            high = k
    assert best is not None
    if abs(best[0]) > tolerance:
        raise ConfigError(
            f"no width matches the dense FLOPs within {tolerance:.0%} at this sparsity "
            f"(closest: {best[0]:+.1%} at width x{best[1]:.3f}, the search stops at x{high:.0f})."
        )
    return build(best[1]), best[1]


def _width_arguments(model: nn.Module, model_cfg: dict, k: float) -> dict:
    """Model arguments that scale every width by k, per model family (a language model's MLP
    width: its other layers stay dense)."""
    import timm

    name = model_cfg["model_name"]
    if getattr(model, "pretrained", False):
        raise ConfigError(
            f"sparse_wide builds the model anew at a larger width, so it cannot widen the "
            f"checkpoint of model '{name}'; use a model built from its config (tiny_llama, "
            "tiny_gpt2) or transform.family=sparse_parallel, sparse_factorized or sparse_doped."
        )
    if "intermediate_size" in model_cfg and callable(getattr(model, "mlp_layers", None)):
        return {"intermediate_size": max(1, round(model_cfg["intermediate_size"] * k))}
    if name == "mlp":
        return {
            "hidden_dims": [
                max(1, round(h * k)) for h in model_cfg.get("hidden_dims") or (256, 256)
            ]
        }
    if name == "resnet20":
        return {"width": max(1, round((model_cfg.get("width") or 16) * k))}
    if isinstance(model, timm.models.resnet.ResNet):
        # timm's `channels` are the blocks' inner widths (conv1's outputs, also for bottlenecks).
        channels = [model.get_submodule(f"layer{i}")[0].conv1.out_channels for i in range(1, 5)]
        return {
            "channels": tuple(max(1, round(c * k)) for c in channels),
            "stem_width": max(1, round(64 * k)),
        }
    if isinstance(model, timm.models.vision_transformer.VisionTransformer):
        hidden = model.blocks[0].mlp.fc1.out_features / model.embed_dim
        return {"mlp_ratio": hidden * k}
    raise ConfigError(
        f"sparse_wide cannot widen model '{name}' (it knows resnet*, resnet20, mlp, vit_*, "
        "tiny_llama and tiny_gpt2); "
        "use transform.family=sparse_parallel, sparse_factorized or sparse_doped."
    )


class SparseIFT(ModelTransform):
    """Saxena et al., "Sparse-IFT: Sparse Iso-FLOP Transformations for Maximizing Training
    Efficiency", ICML 2024: transform the dense model with ``family`` at ``sparsity`` so that
    its sparse FLOPs equal the dense original's; the sparsity method then trains it at that
    sparsity (the ``+method=sparse_ift`` preset: RigL with the paper's settings, drop 0.3
    cosine-decayed, dT = 100, until 75% of training, uniform over the sparse layers). The dense
    original's FLOPs are reported as ``flops/dense`` (the iso-FLOP reference). Of a
    transformer (a ViT, a causal language model) only the MLP blocks are transformed and
    sparse (``sparse_wide`` widens a language model's MLP, ``intermediate_size``, by about
    1 / (1 - s)); the low-rank parts of ``sparse_doped`` stay dense.
    """

    def __init__(
        self, name: str = "sparse_ift", family: str = "sparse_wide", sparsity: float = 0.75
    ) -> None:
        super().__init__(name)
        if family not in FAMILIES:
            raise ConfigError(
                f"transform.family must be one of {', '.join(FAMILIES)}, got '{family}'."
            )
        if not 0 < sparsity < 1:
            raise ConfigError(f"transform.sparsity must be in (0, 1), got {sparsity}.")
        self.family, self.sparsity = family, sparsity
        self.exclude = (f"*.{LOWRANK}.*",)

    def _layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The layers made sparse: the method's selection; of a transformer (a ViT, a causal
        language model) only the MLP blocks."""
        self.include = mlp_blocks(model)
        options = self.layer_options
        return prunable_layers(
            model,
            dense_stem=options["dense_stem"],
            dense_head=options["dense_head"],
            include=options["include"] or self.include,
            exclude=(*options["exclude"], *self.exclude),
        )

    def apply(
        self, model: nn.Module, model_cfg: DictConfig, example: torch.Tensor, datamodule=None
    ) -> nn.Module:
        from sparsebench.models import build_model

        self.reference_flops, _ = module_flops(model, example)
        self.reference_flops /= example.shape[0]
        if self.family == "sparse_wide":
            config = OmegaConf.to_container(model_cfg, resolve=True)
            base = {k: v for k, v in config.items() if v is not None}

            def build(k: float) -> nn.Module:
                return build_model(OmegaConf.create({**base, **_width_arguments(model, base, k)}))

            def sparse_flops(candidate: nn.Module) -> float:
                total, per_layer = module_flops(
                    candidate, example.to(next(candidate.parameters()).device)
                )
                saved = sum(per_layer[n] for n in self._layers(candidate)) * self.sparsity
                return (total - saved) / example.shape[0]

            old = self._layers(model)
            high, device = 8.0, "meta"
            if callable(getattr(model, "mlp_layers", None)):
                # A language model's MLP alone is widened (and sparse): k = 1 / (1 - s). Its
                # masks read a tensor's values (.item()), which the meta device has not: it is
                # counted on the CPU (it is small: built from its config).
                high, device = max(high, 2 / (1 - self.sparsity)), "cpu"
            wide, k = widen(build, sparse_flops, self.reference_flops, high=high, device=device)
            new = self._layers(wide)
            self.description = [f"sparse_wide: widths x{k:.3f}"] + [
                f"{n}: {tuple(o.weight.shape[:2])} -> {tuple(new[n].weight.shape[:2])}"
                for n, o in old.items()
                if n in new
            ]
            return wide
        layers = self._layers(model)
        transformer = bool(self.include)  # token sequences: GELU and LayerNorm inside
        activation = nn.GELU if transformer else nn.ReLU
        self.description = transform_layers(
            model, layers, self.family, self.sparsity, activation, token_norm=transformer
        )
        return model
