"""Sparse-IFT: every family is iso-FLOP with the dense original within 1%, shapes unchanged."""

from __future__ import annotations

import pytest
import torch

from sparsebench.config import ConfigError
from sparsebench.metrics.flops import flops_per_sample
from sparsebench.models import build_model
from sparsebench.models.transforms import FAMILIES
from sparsebench.training import build_method
from tests.conftest import compose_config

MODELS = {"resnet18": ["model=resnet18"], "mlp": ["model=mlp", "dataset=mnist1d"]}
# Training runs on the CIFAR ResNet-20 (its own widening path); resnet18's is checked above
# without training, where it costs seconds instead of a minute per family.
TRAINED = {"resnet20": ["model=resnet20", "dataset.input_shape=[1,16,16]"], "mlp": MODELS["mlp"]}


def _transformed(model_name: str, family: str, sparsity: float):
    cfg = compose_config([*MODELS[model_name], "+method=sparse_ift", f"method.family={family}",
                          f"method.sparsity={sparsity}", "method.inner=static"])  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg.model)
    example = torch.randn(2, *cfg.dataset.input_shape)
    method = build_method(cfg)
    transformed = method.transform_model(model, cfg.model, example[:1])
    return cfg, method, transformed, example


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_iso_flops_and_shapes(model_name: str, family: str, sparsity: float) -> None:
    cfg, method, model, example = _transformed(model_name, family, sparsity)
    method.inner.attach(model)
    method.inner.init_masks()  # static random masks at the target, uniform over sparse layers
    flops = flops_per_sample(model.eval(), example[:1], method.masks.layers)
    assert abs(flops["flops/sparse"] - method.reference_flops) / method.reference_flops <= 0.01
    with torch.no_grad():
        assert model(example).shape == (2, cfg.dataset.num_classes)
    assert method.description
    assert not any("lowrank" in name for name in method.masks.layers)  # doped low-rank stays dense


def test_bad_family_and_unwidenable_model() -> None:
    with pytest.raises(
        ConfigError, match="method.family must be one of sparse_wide, sparse_parallel"
    ):
        build_method(compose_config(["+method=sparse_ift", "method.family=sparse_tall"]))
    cfg = compose_config(["model=efficientnet_b0", "+method=sparse_ift"])
    with pytest.raises(ConfigError, match="sparse_wide cannot widen model 'efficientnet_b0'"):
        build_method(cfg).transform_model(
            build_model(cfg.model), cfg.model, torch.randn(1, 1, 32, 32)
        )


def test_no_transformable_layers() -> None:
    cfg = compose_config(["model=mlp", "dataset=mnist1d", "model.hidden_dims=[16]", "+method=sparse_ift",
                          "method.family=sparse_doped"])  # fmt: skip
    with pytest.raises(ConfigError, match="the model has no transformable layers"):
        build_method(cfg).transform_model(build_model(cfg.model), cfg.model, torch.randn(1, 1, 40))


def test_sparsity_without_a_matching_width() -> None:
    # resnet18 at 99% would need widths x10: past the search's x8.
    cfg = compose_config(["+method=sparse_ift", "method.sparsity=0.99"])
    with pytest.raises(
        ConfigError, match="no width matches the dense FLOPs within 1% at this sparsity"
    ):
        build_method(cfg).transform_model(
            build_model(cfg.model), cfg.model, torch.randn(1, 1, 32, 32)
        )


@pytest.mark.parametrize(
    ("shape", "nblocks"),
    [((256, 256), 4), ((192, 768), 4), ((768, 192), 4), ((1024, 1024), 8), ((512, 512), 2)],
)
def test_monarch_params_and_flops_are_2_over_b(shape: tuple[int, int], nblocks: int) -> None:
    from torch import nn

    from sparsebench.models.transforms.monarch import MonarchLinear

    dense = nn.Linear(*shape, bias=False)
    monarch = MonarchLinear(*shape, nblocks=nblocks, bias=False)
    ratio = 2 / nblocks
    params = sum(p.numel() for p in monarch.parameters())
    assert abs(params / dense.weight.numel() - ratio) / ratio <= 0.01
    x = torch.randn(3, shape[0])
    flops = flops_per_sample(monarch, x)["flops/dense"]
    assert abs(flops / flops_per_sample(dense, x)["flops/dense"] - ratio) / ratio <= 0.01
    assert monarch(x).shape == (3, shape[1])
    assert 0.2 < float(monarch(torch.randn(256, shape[0])).std()) < 2.0  # sensible initial scale


def test_monarch_is_a_full_rank_structured_map() -> None:
    from sparsebench.models.transforms.monarch import MonarchLinear

    torch.manual_seed(0)
    monarch = MonarchLinear(64, 64, nblocks=4, bias=False).double()
    with torch.no_grad():
        matrix = monarch(torch.eye(64, dtype=torch.float64))  # rows: images of the basis vectors
    assert torch.linalg.matrix_rank(matrix) == 64  # the permutation mixes all blocks
    assert (matrix != 0).all()  # every output depends on every input


def test_monarch_method_trains(make_cfg, tmp_path) -> None:
    from runners.train import run

    metrics = run(make_cfg("model=mlp", "dataset=mnist1d", "+method=monarch", "logger=none"))
    assert metrics["flops/sparse"] < 0.75 * metrics["flops/dense"]  # 256x256 hidden layer at 2/4
    assert metrics["sparsity/actual"] == 0.0 and 0 <= metrics["test/acc"] <= 1


def test_parallel_branches_get_their_own_norms() -> None:
    _, method, model, _ = _transformed("resnet18", "sparse_parallel", 0.75)
    assert all("4 parallel sparse branches (own norms)" in line for line in method.description)
    block = model.layer1[0]
    assert len(block.conv1.branches) == 4 and isinstance(block.bn1, torch.nn.Identity)
    assert all(isinstance(branch[1], torch.nn.BatchNorm2d) for branch in block.conv1.branches)


@pytest.mark.parametrize("family", FAMILIES)
def test_vit_mlp_blocks_are_iso_flop(family: str) -> None:
    cfg = compose_config(["model=vit_tiny_patch16_224", "+method=sparse_ift", f"method.family={family}",
                          "method.inner=static"])  # fmt: skip
    model = build_model(cfg.model)
    example = torch.randn(1, *cfg.dataset.input_shape)
    method = build_method(cfg)
    model = method.transform_model(model, cfg.model, example)
    method.inner.attach(model)
    method.inner.init_masks()
    assert all(".mlp." in name for name in method.masks.layers)
    flops = flops_per_sample(model.eval(), example, method.masks.layers)["flops/sparse"]
    assert abs(flops - method.reference_flops) / method.reference_flops <= 0.01


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_name", list(TRAINED))
def test_short_training_fills_the_contract(
    make_cfg, tmp_path, model_name: str, family: str
) -> None:
    import json

    from runners.train import run
    from sparsebench.tracking.results import CONTRACT_METRICS

    metrics = run(make_cfg(*TRAINED[model_name], "+method=sparse_ift", f"method.family={family}",
                           "method.update_interval=1", "logger=none"))  # fmt: skip
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert data["status"] == "ok" and set(CONTRACT_METRICS) <= set(metrics)
    assert abs(metrics["flops/sparse"] - metrics["flops/dense"]) / metrics["flops/dense"] <= 0.01
    assert metrics["sparsity/actual"] == pytest.approx(0.75, abs=0.01)
    assert data["tags"]["baseline_benchmark_key"] == data["tags"]["benchmark_key"]
    assert data["transform"]
