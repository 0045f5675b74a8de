"""HESSO and HESSO-CRIC (Chen et al. 2024, Only-Train-Once) as OTO's code does them: channel
groups with residual streams, the optimizer's direction, OTO's saliency, global selection and
projection, CRIC's phases. Agreement with OTO's own code on one model: benchmarks/hesso_oto.py.
The contract every method meets is tests/sparsity/test_methods.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sparsebench.sparsity.groups import CRITERIA, criteria, direction, saliency
from sparsebench.sparsity.methods import HESSO, HESSOCRIC
from sparsebench.training.measure import model_metrics
from tests.fixtures import fit_method


@pytest.mark.parametrize(
    ("arch", "size"), [("resnet18", 64), ("mobilenetv2_100", 64), ("vit_tiny_patch16_224", 224)]
)
def test_hesso_groups_slim_each_network_without_changing_it(arch: str, size: int) -> None:
    import timm

    from sparsebench.metrics.flops import flops_per_sample

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10).train()
    x = torch.randn(2, 3, size, size)
    method = HESSO(sparsity=0.5)
    method.attach(model, x)
    # Torch-Pruning's trace sets eval mode; training must go on with BatchNorm in train mode.
    assert all(m.training for m in model.modules())
    if arch == "resnet18":  # OTO's partition: 8 inner groups and 4 residual streams, 2880 channels
        assert len(method.groups) == 12 and sum(g.size for g in method.groups) == 2880
        stream = method.groups[0]
        assert stream.layers == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
        assert {"bn1.weight", "layer1.0.bn2.bias"} <= set(stream.names)
    if arch.startswith("vit"):  # the MLP blocks: qkv's channels are reshaped into heads
        assert {g.layers[0] for g in method.groups} == {f"blocks.{i}.mlp.fc1" for i in range(12)}
    model.eval()
    method.identify(torch.rand(sum(g.size for g in method.groups)), method.target)
    method.finalize()
    slim = method.deployed_model(model)
    with torch.no_grad():
        assert torch.allclose(slim(x[:1]), model(x[:1]), atol=1e-4)  # the zero groups did nothing
    assert sum(p.numel() for p in slim.parameters()) < 0.8 * sum(
        p.numel() for p in model.parameters()
    )
    dense = flops_per_sample(model, x[:1])["flops/dense"]
    assert flops_per_sample(slim, x[:1])["flops/dense"] < 0.8 * dense


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.1),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd-momentum", "sgd-nesterov", "sgd", "adam", "adamw"],
)
def test_direction_is_the_step_the_optimizer_takes(make) -> None:
    torch.manual_seed(0)
    param = nn.Parameter(torch.randn(5, 3))
    optimizer = make([param])
    group = optimizer.param_groups[0]
    for _ in range(3):
        param.grad = torch.randn(5, 3)
        d = direction(optimizer, param)
        before = param.detach().clone()
        optimizer.step()
        decay = group["weight_decay"] * before if isinstance(optimizer, torch.optim.AdamW) else 0
        torch.testing.assert_close(param.detach() - before, -group["lr"] * (d + decay))


def test_saliency_is_otos_five_criteria_normalised_over_all_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    method = HESSO(dense_stem=False)
    method.attach(model, torch.randn(2, 3))
    (group,) = method.groups  # the first Linear and its BatchNorm: 4 channels
    assert group.names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    dirs = [torch.randn_like(p) for p in group.params]
    raw = criteria(group, dirs)
    for c in range(4):  # channel c, by hand: its 3 + 1 + 1 + 1 values
        x = torch.cat([p.detach()[c].reshape(-1) for p in group.params])
        d = torch.cat([v[c].reshape(-1) for v in dirs])
        expect = {
            "magnitude": x.norm(),
            "avg_magnitude": x.norm() / 6,
            "cosine_similarity": torch.dot(x, d) / x.norm() / d.norm() + 1,
            "taylor_first_order": torch.dot(x, d).abs(),
            "taylor_second_order": 0.5 * torch.dot(x, d) ** 2,
        }
        for name, value in expect.items():
            torch.testing.assert_close(raw[name][c], value, rtol=1e-4, atol=1e-6)
    halves = [{k: v[:2] for k, v in raw.items()}, {k: v[2:] for k, v in raw.items()}]
    overall = torch.cat(saliency(halves))  # normalised over both "groups" together
    expect = sum(w * raw[k] / raw[k].norm() for k, w in CRITERIA.items())
    torch.testing.assert_close(overall, expect, rtol=1e-4, atol=1e-6)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


def test_hesso_selects_over_the_network_and_projects_linearly_to_zero() -> None:
    model = _mlp()
    method = HESSO(sparsity=0.5, start=0.0, end=0.5, periods=2, dense_stem=False)
    method.bind(16)  # D = 8 // 2 = 4 steps per period
    method.attach(model, torch.randn(4, 8))
    assert method.span == (0, 4) and method.per_period == [8, 8]
    # One layer's channels score lowest: the period takes 8 of them, none of the other's.
    scores = torch.cat([torch.arange(16.0) / 100, 1 + torch.arange(16.0)])
    method.identify(scores, method.per_period[0])
    assert method.active[0].sum() == 8 and method.active[0][:8].all() and not method.active[1].any()
    rows = method.active[0]
    saved = [p.detach()[rows].clone() for p in method.groups[0].params]
    for n, factor in zip((1, 2, 3), (2 / 3, 1 / 2, 0.0), strict=True):  # t = n mod 4
        method.after_step(n)
        for p, value in zip(method.groups[0].params, saved, strict=True):
            value *= factor
            torch.testing.assert_close(p.detach()[rows], value)
    assert method.pruned[0][:8].all() and not method.active[0].any()  # masked at t = D - 1
    assert not method.masks.mask("0")[:8].any() and method.masks.mask("0")[8:].all()


def _steps(method, model, first: int, last: int) -> None:
    """The training loop's hooks around SGD steps ``first`` .. ``last - 1``."""
    if method.optimizer is None:
        method.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=gen), torch.randint(0, 4, (32,), generator=gen)
    for step in range(first, last):
        loss = nn.functional.cross_entropy(model(x), y)
        method.observe_loss(step, loss.detach())
        method.optimizer.zero_grad()
        loss.backward()
        method.after_backward(step)
        method.mask_grads()
        method.optimizer.step()
        method.after_step(step + 1)
        method.apply()


def test_hesso_cric_trials_reset_and_decides_on_the_averaged_saliency() -> None:
    model = _mlp()
    method = HESSOCRIC(sparsity=0.5, start=0.05, sampling_steps=2, hybrid=0.1, dense_stem=False)
    method.bind(40)  # start at step 2; 2 groups x 6 trial steps; cycles of 2; 4 hybrid steps
    method.attach(model, torch.randn(4, 8))
    assert (method.begin, method.sampling_start, method.hybrid_steps) == (2, 14, 4)
    _steps(method, model, 0, 1)
    reference = method.snapshot()  # saved at n = 2, before its update
    _steps(method, model, 1, 2)  # n = 2: trial k = 0 projects a quarter of group 0
    assert int((method.groups[0].params[0].detach() == 0).all(1).sum()) == 4
    _steps(method, model, 2, 3)  # n = 3: trial k = 1 records its loss and resets
    assert len(method.trial_losses[0]) == 1 and not method.trial_losses[1]
    for p, v in zip(method.trained, reference, strict=True):
        assert torch.equal(p.detach(), v)  # every trial steps back to the reference point
    _steps(method, model, 3, 40)
    assert method.terminated_at is not None and method.cycle >= 2
    assert all(len(losses) == 3 for losses in method.trial_losses)  # 0.25, 0.5 and 0.75 each
    removed = sum(int(p.sum()) for p in method.pruned)
    assert removed == method.target and 0 < removed <= 16
    for group, pruned in zip(method.groups, method.pruned, strict=True):
        for p in group.params:
            assert (p.detach()[pruned] == 0).all()


def test_hesso_prunes_residual_streams_and_slims_the_trained_network(
    make_cfg, tmp_path: Path
) -> None:
    cfg = make_cfg(
        "+method=hesso",
        "method.periods=2",
        "method.start=0.0",
        "method.end=0.75",
        "model=resnet20",
        "dataset.input_shape=[1,16,16]",
        "dataset.batch_size=32",
        "trainer.limit_train_batches=8",
        "logger=none",
    )
    model, method, _, datamodule, _ = fit_method(cfg, tmp_path, max_epochs=1)
    assert not any(a.any() for a in method.active)  # every period ended
    fractions = [float(p.float().mean()) for p in method.pruned]
    streams = [g for g in method.groups if len(g.layers) > 1]  # the three residual streams
    assert len(streams) == 3 and any(method.pruned[method.groups.index(g)].any() for g in streams)
    assert max(fractions) - min(fractions) > 0.1  # different layers lose different fractions
    for group, pruned in zip(method.groups, method.pruned, strict=True):
        for p in group.params:
            assert (p.detach()[pruned] == 0).all()  # filters, biases, BatchNorms exactly zero
    example = datamodule.example_input(1)
    metrics = model_metrics(model, example, 64, method)
    slim = method.deployed_model(model)
    from sparsebench.metrics.flops import flops_per_sample

    assert (
        metrics["flops/sparse"]
        == flops_per_sample(slim, example)["flops/dense"]
        < metrics["flops/dense"]
    )
    assert metrics["params/deployed"] == sum(p.numel() for p in slim.parameters())
