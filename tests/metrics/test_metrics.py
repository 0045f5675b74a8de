"""Hand-computed FLOPs and parameter counts on tiny models; the CPU latency measurement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench.hardware import CPUTarget
from sparsebench.metrics.flops import flops_per_sample, module_flops
from sparsebench.metrics.params import actual_sparsity, count_params, layer_densities
from sparsebench.sparsity.prunable import prunable_layers


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)  # dense by default
        self.body = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mid = nn.Linear(8, 6)
        self.head = nn.Linear(6, 3)  # dense by default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x))
        return self.head(self.mid(self.pool(x).flatten(1)))


def test_prunable_layers_skip_stem_and_head() -> None:
    model = Tiny()
    assert list(prunable_layers(model)) == ["body", "mid"]
    assert list(prunable_layers(model, dense_stem=False, dense_head=False)) == [
        "stem",
        "body",
        "mid",
        "head",
    ]


def test_flops_hand_computed() -> None:
    model = Tiny()
    x = torch.zeros(2, 1, 5, 5)
    total, per_layer = module_flops(model, x)
    stem = 2 * 2 * 25 * 4 * 1 * 9  # 2 FLOPs x batch x pixels x c_out x c_in x k^2
    body = 2 * 2 * 25 * 8 * 4 * 9
    mid, head = 2 * 2 * 8 * 6, 2 * 2 * 6 * 3
    assert per_layer == {"stem": stem, "body": body, "mid": mid, "head": head}
    assert total == stem + body + mid + head


def test_sparse_flops_scale_with_layer_density() -> None:
    model = Tiny()
    with torch.no_grad():
        model.body.weight.view(-1)[: model.body.weight.numel() // 4 * 3] = 0  # 75% zeros
        model.mid.weight.zero_()
        model.head.weight.view(-1)[:9] = 0  # head is not prunable: counted dense
    flops = flops_per_sample(model, torch.zeros(1, 1, 5, 5))
    body, mid = 2 * 25 * 8 * 4 * 9, 2 * 8 * 6
    assert flops["flops/dense"] - flops["flops/sparse"] == 0.75 * body + mid
    assert flops["macs/dense"] * 2 == flops["flops/dense"]
    assert layer_densities(model) == {"body": 0.25, "mid": 0.0}
    assert abs(actual_sparsity(model) - (216 + 48) / (288 + 48)) < 1e-12


def test_param_counts() -> None:
    model = Tiny()
    counts = count_params(model)
    assert counts["params/total"] == 36 + 288 + (48 + 6) + (18 + 3)
    with torch.no_grad():
        model.mid.bias.zero_()
    assert count_params(model)["params/nonzero"] == counts["params/total"] - 6


def test_vit_attention_is_counted() -> None:
    import timm

    model = timm.create_model("vit_tiny_patch16_224", num_classes=10)
    flops = flops_per_sample(model, torch.zeros(1, 3, 224, 224))["flops/dense"]
    # ~2.5 GFLOPs with attention; linear layers alone are ~2.15 GFLOPs.
    assert 2.4e9 < flops < 2.6e9


def test_cpu_latency_percentiles() -> None:
    target = CPUTarget(name="cpu", threads=1, batch_size=4, min_run_time=0.05, warmup=1)
    out = target.benchmark(nn.Sequential(nn.Linear(16, 16), nn.ReLU()), torch.zeros(1, 16)).metrics
    assert 0 < out["latency/p50_ms"] <= out["latency/p90_ms"]
    assert out["latency/dense_p50_ms"] == out["latency/p50_ms"]
    assert abs(out["throughput/samples_per_s"] - 4 / (out["latency/p50_ms"] / 1e3)) < 1e-6
    assert torch.get_num_threads() == 1  # restored
    tags = target.fingerprint()
    assert tags["hw/threads"] == "1" and tags["hw/cpu"]


def test_resnet18_flops_at_224() -> None:
    import timm

    model = timm.create_model("resnet18", num_classes=1000)
    flops = flops_per_sample(model, torch.zeros(1, 3, 224, 224))["flops/dense"]
    assert abs(flops - 3.63e9) / 3.63e9 < 0.01


def test_resnet18_sparse_flops_equal_the_hand_sum() -> None:
    import timm

    from sparsebench.sparsity.methods import RandomPruning

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    method = RandomPruning(sparsity=0.9, distribution="uniform")
    method.attach(model)
    method.init_masks()
    # By hand: every Conv/Linear costs 2 * H_out * W_out * C_out * C_in/groups * kh * kw (Linear:
    # 2 * in * out), scaled by its density; stem and head stay dense.
    outputs = {}
    hooks = [
        m.register_forward_hook(lambda m, a, out, n=n: outputs.__setitem__(n, out.shape))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    dense = sparse = 0.0
    for name, shape in outputs.items():
        m = model.get_submodule(name)
        if isinstance(m, nn.Conv2d):
            cost = (
                2
                * shape[2]
                * shape[3]
                * m.out_channels
                * m.in_channels
                // m.groups
                * m.kernel_size[0]
                * m.kernel_size[1]
            )
        else:
            cost = 2 * m.in_features * m.out_features
        density = (
            float(m.weight.count_nonzero()) / m.weight.numel()
            if name in method.masks.layers
            else 1.0
        )
        assert name in method.masks.layers or name in ("conv1", "fc")
        dense += cost
        sparse += cost * density
    got = flops_per_sample(model, x, method.masks.layers)
    assert got["flops/dense"] == dense
    assert got["flops/sparse"] == pytest.approx(sparse, rel=1e-9)
