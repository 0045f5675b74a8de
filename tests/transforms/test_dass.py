"""DASS: sparse operations, the supernet, discretisation, masks from searched scores, and the
whole search -> derive -> retrain run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from sparsebench.errors import ConfigError
from sparsebench.models.dass import (
    DerivedNetwork,
    SearchNetwork,
    check_genotype,
    default_genotype,
)
from sparsebench.models.dass_ops import OPS, SparseConv2d, TopK
from sparsebench.sparsity.masks import MASK
from sparsebench.sparsity.methods import SearchedMasks
from tests.fixtures import run_cli


def test_sparse_operation_keeps_its_fraction_and_scores_learn() -> None:
    torch.manual_seed(0)
    conv = SparseConv2d(4, 4, 3, padding=1, bias=False, sparsity=0.9)
    mask = TopK.apply(conv.scores, 0.1)
    assert int(mask.sum()) == round(0.1 * conv.weight.numel())
    conv(torch.randn(2, 4, 6, 6)).sum().backward()
    assert conv.scores.grad is not None and conv.scores.grad.abs().sum() > 0  # straight-through
    kept = (conv.masked_weight() != 0).sum()
    assert int(kept) == int(mask.sum())


def test_supernet_discretises_to_a_valid_genotype_and_prices_sparsity() -> None:
    torch.manual_seed(0)
    net = SearchNetwork(1, 10, channels=4, cells=3, nodes=3)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    genotype = net.genotype()
    assert check_genotype(genotype, 3) == genotype
    names = list(OPS)
    with torch.no_grad():  # favour the dense 3x3 conv, then its 90% sparse twin
        net.alpha_normal.zero_()[:, names.index("conv_3x3")] = 5.0
        net.alpha_reduce.zero_()[:, names.index("conv_3x3")] = 5.0
        dense_cost = float(net.expected_cost().detach())
        net.alpha_normal.zero_()[:, names.index("sparse_conv_3x3_s90")] = 5.0
        net.alpha_reduce.zero_()[:, names.index("sparse_conv_3x3_s90")] = 5.0
    assert float(net.expected_cost().detach()) < dense_cost
    assert {op for op, _ in net.genotype()["normal"]} == {"sparse_conv_3x3_s90"}


def test_bad_genotype_is_one_sentence() -> None:
    bad = {"normal": [["conv_9x9", 0]] * 6, "reduce": [["conv_3x3", 0]] * 6, "head": "linear"}
    with pytest.raises(ConfigError, match="transform.genotype is not a genotype for 3 nodes"):
        check_genotype(bad, 3)


def test_derived_network_is_masked_by_the_searched_scores() -> None:
    torch.manual_seed(0)
    genotype = default_genotype(3) | {"head": "sparse_linear_s90"}
    model = DerivedNetwork(1, 10, genotype, channels=4)
    method = SearchedMasks()
    layers = model.layer_sparsity()
    assert layers["classifier"] == 0.9 and all(
        s == 0.5 for n, s in layers.items() if n != "classifier"
    )
    method.attach(model)
    name = next(n for n in layers if n != "classifier")
    layer = model.get_submodule(name)  # the scores the search learnt, as the transform hands them
    layer.searched_scores = torch.arange(layer.weight.numel(), dtype=torch.float).view_as(
        layer.weight
    )
    method.init_masks()
    mask = getattr(model.get_submodule(name), MASK).flatten()
    assert mask[mask.numel() // 2 :].all() and not mask[: mask.numel() // 2].any()  # top-k scores
    for layer, sparsity in layers.items():
        kept = getattr(model.get_submodule(layer), MASK).float().mean()
        assert float(kept) == pytest.approx(1 - sparsity, abs=0.01)


@pytest.mark.slow
def test_dass_searches_derives_retrains_and_logs(tmp_path: Path) -> None:
    args = [
        "+method=dass",
        "transform.search_epochs=1",
        "transform.search_batches=2",
        "model.channels=4",
        "debug=fast",
        "hardware.threads=1",
    ]
    proc = run_cli(args, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DASS derived genotype: normal: " in proc.stdout + proc.stderr
    (results,) = tmp_path.glob("outputs/**/results.json")
    data = json.loads(results.read_text())
    genotype = data["genotype"]
    assert check_genotype(genotype, 3)
    assert len(data["search_history"]) == 1 and data["metrics"]["time/search_s"] > 0
    assert json.loads((results.parent / "genotype.json").read_text()) == genotype
    metrics = data["metrics"]
    assert metrics["sparsity/actual"] == pytest.approx(metrics["sparsity/target"], abs=0.01)
    assert data["tags"]["model"] == "dass_network"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = data["mlflow"]["run_id"]
    assert "genotype.json" in {a.path for a in client.list_artifacts(run_id)}


def test_a_random_genotype_is_a_seeded_draw_from_the_space() -> None:
    from sparsebench.models.dass import check_genotype, random_genotype
    from sparsebench.transforms import DASS

    draws = [random_genotype(3, seed) for seed in range(20)]
    assert all(check_genotype(g, 3) == g for g in draws)  # valid genotypes of the space
    assert random_genotype(3, 7) == random_genotype(3, 7) and len({str(g) for g in draws}) == 20
    assert DASS(nodes=3, genotype="random", seed=7).genotype == random_genotype(3, 7)
