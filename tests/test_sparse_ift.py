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
