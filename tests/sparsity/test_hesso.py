"""HESSO (Chen et al. 2024, Only-Train-Once): its channel groups slim each network without
changing its function, groups are projected to zero over its periods, and CRIC restores a
candidate the loss needs. The contract every method meets is tests/sparsity/test_methods.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsebench.training.measure import model_metrics
from tests.fixtures import fit_method


@pytest.mark.parametrize(
    ("arch", "size"), [("resnet18", 64), ("mobilenetv2_100", 64), ("vit_tiny_patch16_224", 224)]
)
def test_hesso_groups_slim_each_network_without_changing_it(arch: str, size: int) -> None:
    import timm

    from sparsebench.metrics.flops import flops_per_sample
    from sparsebench.sparsity.methods import HESSO

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10).train()
    x = torch.randn(2, 3, size, size)
    method = HESSO(sparsity=0.5)
    method.attach(model, x)
    # Torch-Pruning's trace sets eval mode; training must go on with BatchNorm in train mode.
    assert all(m.training for m in model.modules())
    model.eval()
    x = x[:1]
    if arch.startswith("vit"):  # the MLP blocks: qkv's channels are reshaped into heads
        assert set(method.masks.layers) == {f"blocks.{i}.mlp.fc1" for i in range(12)}
    for name, _ in method.masks:  # the last period's choice, made at once
        method.shrinking[name] = method.choose(name, method.periods - 1, method.protected[name])
    method.finalize()
    slim = method.deployed_model(model)
    with torch.no_grad():
        assert torch.allclose(slim(x), model(x), atol=1e-4)  # the zero groups did nothing
    assert sum(p.numel() for p in slim.parameters()) < 0.8 * sum(
        p.numel() for p in model.parameters()
    )
    assert (
        flops_per_sample(slim, x)["flops/dense"] < 0.8 * flops_per_sample(model, x)["flops/dense"]
    )


def test_hesso_projects_groups_to_zero_over_periods_with_cric(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "+method=hesso",
        "method.cric=true",
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
    assert not method.shrinking and method.cycles_left == 0  # every period ended
    for name, _ in method.masks:
        rows = method.rows(name)
        assert int((~rows).sum()) == round(0.5 * rows.numel())  # half of each layer's channels
        for param in method.params(name):
            assert (param.detach()[~rows] == 0).all()  # filter, bias and BatchNorm exactly zero
    example = datamodule.example_input(1)
    metrics = model_metrics(model, example, 64, method)
    slim = method.deployed_model(model)
    from sparsebench.metrics.flops import flops_per_sample

    assert (
        metrics["flops/sparse"]
        == flops_per_sample(slim, example)["flops/dense"]
        < metrics["flops/dense"]
    )
    assert (
        metrics["params/deployed"]
        == sum(p.numel() for p in slim.parameters())
        < metrics["params/nonzero"]
    )


def test_hesso_cric_restores_a_candidate_the_loss_needs() -> None:
    from torch import nn

    from sparsebench.sparsity.methods import HESSO

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    method = HESSO(
        sparsity=0.5, start=0.0, end=1.0, periods=1, cric=True, cric_cycles=2, dense_stem=False
    )
    method.attach(model, torch.randn(4, 8))
    method.bind(10)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    method.after_backward(0)  # the period starts: 8 candidates, held at zero
    candidates = method.shrinking["0"].clone()
    assert int(candidates.sum()) == 8 and (model[0].weight[candidates] == 0).all()
    row = int(candidates.nonzero()[0])
    saved = method.saved["0"][row].clone()
    # At the projected point the gradient says: restoring this row lowers the loss.
    model[0].weight.grad[row] = -10 * saved[: model[0].weight.shape[1]]
    method.after_backward(1)
    assert method.protected["0"][row] and not method.shrinking["0"][row]
    assert torch.equal(model[0].weight[row].detach(), saved[: model[0].weight.shape[1]])  # restored
    assert int(method.shrinking["0"].sum()) == 8  # and replaced by the next-lowest group
    assert not torch.equal(method.shrinking["0"], candidates)
