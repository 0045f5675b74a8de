"""Every model config builds through timm.create_model and runs on its dataset's input shape."""

from __future__ import annotations

import pytest
import timm
import torch

from sparsebench.config.resources import available
from sparsebench.errors import ConfigError
from sparsebench.models import build_model
from tests.fixtures import compose_config

# Which dataset each model is exercised on (small inputs keep this fast on a CPU).
DATASET_FOR = {"mlp": "mnist1d", "tiny_llama": "shakespeare", "tiny_gpt2": "shakespeare"}
# hf_causal_lm loads a save_pretrained folder: tests/models/test_language.py writes one.
BUILT_FROM_CONFIG = [m for m in available("model") if m != "hf_causal_lm"]


@pytest.mark.parametrize("model_name", BUILT_FROM_CONFIG)
def test_model_builds_and_runs(model_name: str) -> None:
    dataset = DATASET_FOR.get(model_name, "digits")
    cfg = compose_config([f"model={model_name}", f"dataset={dataset}"], output_dir="/tmp/x")
    model = build_model(cfg.model).eval()
    if cfg.dataset.task == "language_modeling":  # token ids in, next-token logits out
        x = torch.randint(0, cfg.dataset.vocab_size, (2, cfg.dataset.seqlen))
        shape = (2, cfg.dataset.seqlen, cfg.dataset.vocab_size)
    else:
        x = torch.randn(2, *cfg.dataset.input_shape)
        shape = (2, cfg.dataset.num_classes)
    with torch.no_grad():
        out = model(x)
    assert out.shape == shape
    assert torch.isfinite(out).all()


def test_timm_models_take_dataset_shape() -> None:
    cfg = compose_config(["model=vit_tiny_patch16_224", "dataset=cifar100"])
    model = build_model(cfg.model)
    assert model.patch_embed.img_size == (32, 32)
    assert model.num_classes == 100
    cfg = compose_config(["model=resnet18", "dataset=mnist"])
    assert build_model(cfg.model).conv1.in_channels == 1


def test_small_models_are_registered_with_timm() -> None:
    from sparsebench.models import small  # noqa: F401  (registers them with timm)

    assert timm.is_model("mlp") and timm.is_model("resnet20")
    net = timm.create_model("resnet20", num_classes=10, in_chans=3)
    params = sum(p.numel() for p in net.parameters())
    # He et al. report 0.27M; projection shortcuts add 2.8k.
    assert 0.26e6 < params < 0.28e6
    blocks = [m for m in net.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 9  # 3 stages x 3 blocks -> 6*3 + 2 = 20 layers


def test_mlp_hidden_dims_and_in_features() -> None:
    cfg = compose_config(["model=mlp", "dataset=digits", "model.hidden_dims=[32,16]"])
    assert cfg.model.in_features == 1 * 32 * 32
    model = build_model(cfg.model)
    assert [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)] == [
        32,
        16,
        10,
    ]


def test_pretrained_without_weights_is_one_sentence() -> None:
    cfg = compose_config(["model=mlp", "dataset=mnist1d", "model.pretrained=true"])
    with pytest.raises(
        ConfigError, match="model 'mlp' has no pretrained weights; set model.pretrained=false"
    ):
        build_model(cfg.model)


def test_unknown_timm_name_is_one_sentence() -> None:
    cfg = compose_config(["model.model_name=resnet_nope"])
    with pytest.raises(ConfigError, match="timm has no model 'resnet_nope'"):
        build_model(cfg.model)


def test_timm_keyword_arguments_pass_through_and_unknown_ones_are_one_sentence() -> None:
    from sparsebench.config.checks import validate
    from sparsebench.errors import ConfigError

    cfg = compose_config(
        ["model.global_pool=max", "+model.zero_init_last=false"], output_dir="/tmp/x"
    )
    validate(cfg)  # the timm family's schema is open: its keys are timm's
    assert build_model(cfg.model).global_pool.pool_type == "max"
    with pytest.raises(ConfigError, match="unexpected keyword argument 'nonsense'"):
        build_model(compose_config(["+model.nonsense=1"], output_dir="/tmp/x").model)
