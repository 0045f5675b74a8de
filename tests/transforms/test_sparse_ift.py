"""Sparse-IFT: every family is iso-FLOP with the dense original within 1%, shapes unchanged; the
transformation composes with any method (static random masks here, RigL in the preset)."""

from __future__ import annotations

import pytest
import torch

from sparsebench.errors import ConfigError
from sparsebench.metrics.flops import flops_per_sample
from sparsebench.models import build_model
from sparsebench.training.parts import build_method, build_run_model, build_transform
from sparsebench.transforms import FAMILIES
from tests.fixtures import compose_config

MODELS = {"resnet18": ["model=resnet18"], "mlp": ["model=mlp", "dataset=mnist1d"]}
# Training runs on the CIFAR ResNet-20 (its own widening path); resnet18's is checked above
# without training, where it costs seconds instead of a minute per family.
TRAINED = {"resnet20": ["model=resnet20", "dataset.input_shape=[1,16,16]"], "mlp": MODELS["mlp"]}


def _static(*overrides: str, sparsity: float = 0.75):
    """Sparse-IFT composed with static random masks (uniform over the sparse layers)."""
    return compose_config(
        [
            *overrides,
            "+transform=sparse_ift",
            f"transform.sparsity={sparsity}",
            "+method=random",
            "method.distribution=uniform",
            f"method.sparsity={sparsity}",
        ]
    )


class _Data:
    """What the transformation reads of a datamodule: an example input."""

    def __init__(self, example: torch.Tensor) -> None:
        self.example = example

    def example_input(self, batch: int) -> torch.Tensor:
        return self.example[:batch]


def _transformed(model_name: str, family: str, sparsity: float):
    cfg = _static(*MODELS[model_name], f"transform.family={family}", sparsity=sparsity)
    torch.manual_seed(0)
    example = torch.randn(2, *cfg.dataset.input_shape)
    method = build_method(cfg)
    transform = build_transform(cfg, method)
    transformed = build_run_model(cfg, _Data(example), method, transform)
    return cfg, method, transform, transformed, example


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_iso_flops_and_shapes(model_name: str, family: str, sparsity: float) -> None:
    cfg, method, transform, model, example = _transformed(model_name, family, sparsity)
    method.attach(model)
    method.init_masks()  # static random masks at the target, uniform over sparse layers
    flops = flops_per_sample(model.eval(), example[:1], method.masks.layers)
    reference = transform.reference_flops
    assert abs(flops["flops/sparse"] - reference) / reference <= 0.01
    with torch.no_grad():
        assert model(example).shape == (2, cfg.dataset.num_classes)
    assert transform.description
    assert not any("lowrank" in name for name in method.masks.layers)  # doped low-rank stays dense


def test_bad_family_and_unwidenable_model() -> None:
    cfg = compose_config(["+method=sparse_ift", "transform.family=sparse_tall"])
    with pytest.raises(
        ConfigError, match="transform.family must be one of sparse_wide, sparse_parallel"
    ):
        build_transform(cfg, build_method(cfg))
    cfg = compose_config(["+method=sparse_ift", "method.sparsity=0.9"])  # the link undone
    with pytest.raises(ConfigError, match="iso-FLOP at transform.sparsity=0.75, but method "):
        build_transform(cfg, build_method(cfg))
    cfg = compose_config(["model=efficientnet_b0", "+method=sparse_ift"])
    with pytest.raises(ConfigError, match="sparse_wide cannot widen model 'efficientnet_b0'"):
        build_transform(cfg, build_method(cfg)).apply(
            build_model(cfg.model), cfg.model, torch.randn(1, 1, 32, 32)
        )


def test_no_transformable_layers() -> None:
    cfg = compose_config(
        [
            "model=mlp",
            "dataset=mnist1d",
            "model.hidden_dims=[16]",
            "+method=sparse_ift",
            "transform.family=sparse_doped",
        ]
    )
    with pytest.raises(ConfigError, match="the model has no transformable layers"):
        build_transform(cfg, build_method(cfg)).apply(
            build_model(cfg.model), cfg.model, torch.randn(1, 1, 40)
        )


def test_sparsity_without_a_matching_width() -> None:
    # resnet18 at 99% would need widths x10: past the search's x8.
    cfg = compose_config(["+method=sparse_ift", "transform.sparsity=0.99"])
    with pytest.raises(
        ConfigError, match="no width matches the dense FLOPs within 1% at this sparsity"
    ):
        build_transform(cfg, build_method(cfg)).apply(
            build_model(cfg.model), cfg.model, torch.randn(1, 1, 32, 32)
        )


@pytest.mark.parametrize(
    ("shape", "nblocks"),
    [((256, 256), 4), ((192, 768), 4), ((768, 192), 4), ((1024, 1024), 8), ((512, 512), 2)],
)
def test_monarch_params_and_flops_are_2_over_b(shape: tuple[int, int], nblocks: int) -> None:
    from torch import nn

    from sparsebench.transforms import MonarchLinear

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
    from sparsebench.transforms import MonarchLinear

    torch.manual_seed(0)
    monarch = MonarchLinear(64, 64, nblocks=4, bias=False).double()
    with torch.no_grad():
        matrix = monarch(torch.eye(64, dtype=torch.float64))  # rows: images of the basis vectors
    assert torch.linalg.matrix_rank(matrix) == 64  # the permutation mixes all blocks
    assert (matrix != 0).all()  # every output depends on every input


def test_monarch_method_trains(make_cfg, tmp_path) -> None:
    from sparsebench.runners.train import run

    metrics = run(
        make_cfg("model=mlp", "dataset=mnist1d", "+method=monarch", "logger=none")
    ).metrics
    assert metrics["flops/sparse"] < 0.75 * metrics["flops/dense"]  # 256x256 hidden layer at 2/4
    assert metrics["sparsity/actual"] == 0.0 and 0 <= metrics["test/acc"] <= 1


def test_parallel_branches_get_their_own_norms() -> None:
    _, _, transform, model, _ = _transformed("resnet18", "sparse_parallel", 0.75)
    assert all("4 parallel sparse branches (own norms)" in line for line in transform.description)
    block = model.layer1[0]
    assert len(block.conv1.branches) == 4 and isinstance(block.bn1, torch.nn.Identity)
    assert all(isinstance(branch[1], torch.nn.BatchNorm2d) for branch in block.conv1.branches)


@pytest.mark.parametrize("family", FAMILIES)
def test_vit_mlp_blocks_are_iso_flop(family: str) -> None:
    cfg = _static("model=vit_tiny_patch16_224", f"transform.family={family}")
    example = torch.randn(1, *cfg.dataset.input_shape)
    method = build_method(cfg)
    transform = build_transform(cfg, method)
    model = build_run_model(cfg, _Data(example), method, transform)
    method.attach(model)
    method.init_masks()
    assert all(".mlp." in name for name in method.masks.layers)
    flops = flops_per_sample(model.eval(), example, method.masks.layers)["flops/sparse"]
    reference = transform.reference_flops
    assert abs(flops - reference) / reference <= 0.01


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_name", list(TRAINED))
def test_short_training_fills_the_contract(
    make_cfg, tmp_path, model_name: str, family: str
) -> None:
    import json

    from sparsebench.record.contract import CONTRACT_METRICS
    from sparsebench.runners.train import run

    metrics = run(
        make_cfg(
            *TRAINED[model_name],
            "+method=sparse_ift",
            f"transform.family={family}",
            "method.update_interval=1",
            "logger=none",
        )
    ).metrics
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert data["status"] == "ok" and set(CONTRACT_METRICS) <= set(metrics)
    assert abs(metrics["flops/sparse"] - metrics["flops/dense"]) / metrics["flops/dense"] <= 0.01
    assert metrics["sparsity/actual"] == pytest.approx(0.75, abs=0.01)
    assert data["tags"]["baseline_benchmark_key"] == data["tags"]["benchmark_key"]
    assert data["transform"]


LM = ["dataset=shakespeare", "dataset.seqlen=16", "dataset.vocab_size=300"]
LM_SIZE = ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=2"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt2"])
def test_a_language_models_mlp_blocks_are_iso_flop(model_name: str, family: str) -> None:
    cfg = _static(
        f"model={model_name}",
        *LM,
        *LM_SIZE,
        "model.intermediate_size=64",
        f"transform.family={family}",
    )
    example = torch.randint(0, 300, (1, 16))
    method = build_method(cfg)
    transform = build_transform(cfg, method)
    model = build_run_model(cfg, _Data(example), method, transform)
    method.attach(model)
    method.init_masks()
    names = list(method.masks.layers)
    assert names and all(".mlp." in n and "lowrank" not in n for n in names)  # attention dense
    flops = flops_per_sample(model.eval(), example, method.masks.layers)["flops/sparse"]
    assert abs(flops - transform.reference_flops) / transform.reference_flops <= 0.01
    if family == "sparse_wide":  # only the MLP is widened: by 1 / (1 - s)
        first = model.get_submodule(model.mlp_layers()[0])  # gate_proj, c_fc: d -> width
        assert first.out_features == pytest.approx(64 * 4, rel=0.02)
    with torch.no_grad():
        assert model(example).shape == (1, 16, 300)


def test_monarch_replaces_a_language_models_mlp_and_sparse_wide_refuses_a_checkpoint() -> None:
    from sparsebench.transforms import MonarchLinear

    cfg = compose_config(["model=tiny_llama", *LM, *LM_SIZE, "+method=monarch"])
    example = torch.randint(0, 300, (1, 16))
    model = build_run_model(cfg, _Data(example), None, build_transform(cfg, None))
    replaced = {n for n, m in model.named_modules() if isinstance(m, MonarchLinear)}
    mlp = build_model(cfg.model).mlp_layers()
    assert replaced == set(mlp) and len(replaced) == 2 * 3  # gate, up, down; attention dense
    with torch.no_grad():
        assert model(example).shape == (1, 16, 300)
    checkpoint = build_model(cfg.model)
    checkpoint.pretrained = True  # as hf_causal_lm builds it: a checkpoint's fixed widths
    with pytest.raises(ConfigError, match="sparse_wide builds the model anew"):
        build_transform(_static("model=tiny_llama", *LM), None).apply(
            checkpoint, cfg.model, example
        )
