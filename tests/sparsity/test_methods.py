"""Contract tests over every method config: the sparsity trained is the sparsity reported.

Each method trains a few steps on a toy-sized run (updates every step), then: every masked
weight is exactly zero, each layer's density is its target within the pattern's granularity,
``sparsity/actual`` equals ``sparsity/target``, and a checkpoint resumes with masks and
optimizer state intact.
"""

from __future__ import annotations

import copy
import types
from pathlib import Path

import lightning as L
import pytest
import torch

from sparsebench.config.checks import validate
from sparsebench.config.targets import list_methods
from sparsebench.errors import ConfigError
from sparsebench.sparsity.masks import MASK
from sparsebench.sparsity.patterns import NM, as_matrix, is_nm
from sparsebench.training.fit import fit, sparsity_callbacks
from sparsebench.training.measure import model_metrics
from sparsebench.training.parts import (
    build_datamodule,
    build_method,
    build_module,
    build_run_model,
)
from tests.fixtures import fit_method

# Every training method with masks (monarch is structural and dense: tests/transforms/test_sparse_ift.py;
# node masks whole units of an MLP chain: tests/search/test_search_baseline.py; dass trains the network
# it searched: tests/transforms/test_dass.py; post-training methods prune once: tests/pruning/test_pruning.py).
METHODS = [
    m
    for m in list_methods(("training", "structured", "transform_preset"), masked=True)
    if m not in ("node", "dass")
]
# Make every schedule act within an 8-step run.
FAST_SCHEDULE = {
    "set": ["method.update_interval=1"],
    "rigl": ["method.update_interval=1"],
    "gmp": ["method.update_interval=1", "method.start=0.0", "method.end=0.5"],
    "pgf": ["method.rate=0.2", "method.end=0.5"],
    "iss_p": ["method.end=0.5"],
    "imp": ["method.rate=0.5"],  # 3 levels: 4 rounds of 2 steps
    "soups": ["method.phases=2", "method.copies=2", "method.recalibrate_batches=2"],
    "sparse_ift": ["transform.family=sparse_parallel", "method.update_interval=1"],
    "channel": ["method.update_interval=1", "method.start=0.0", "method.end=0.5"],
    "hesso": ["method.start=0.0", "method.end=0.5", "method.periods=2"],
    # 12 trial steps (2 groups x 6), 1-step sampling cycles, 2 hybrid steps: 16 steps.
    "hesso_cric": ["method.start=0.0", "method.sampling_steps=1"],
}
STEPS = {"hesso_cric": 8}  # batches per epoch (else 4)
# Every method on an MLP and on a CIFAR ResNet-20 (convolutions, residual shortcuts); timm's
# resnet18 for the methods whose code depends most on the network's structure (channel pruning's
# dependency graph, RigL's growth over every conv). resnet18 at 64x64 so that layer4 maps are
# 2x2: at 1x1 every off-centre 3x3 tap gets a zero gradient, and a weight SET grows there stays
# exactly zero (counted by sparsity/actual); resnet20 at 16x16 ends at 4x4.
MODEL_DATA = {
    "mlp": ["model=mlp", "dataset=digits", "dataset.input_shape=[1,8,8]"],
    "resnet18": ["model=resnet18", "dataset.input_shape=[1,64,64]", "dataset.batch_size=32"],
    "resnet20": ["model=resnet20", "dataset.input_shape=[1,16,16]", "dataset.batch_size=32"],
    # A one-block LLaMA on a few text files (its Linears: attention and MLP, lm_head dense).
    "lm": [
        "model=tiny_llama",
        "model.num_layers=1",
        "model.hidden_size=32",
        "model.num_heads=2",
        "model.intermediate_size=64",
        "dataset=text",
        "dataset.seqlen=16",
        "dataset.vocab_size=300",
        "dataset.batch_size=8",
        "trainer=lm",
        "trainer.warmup_steps=2",
    ],
}
# The training methods on a language model's Linear layers (Sparse-IFT widens the MLP).
LM_METHODS = ("random", "set", "rigl", "gmp", "imp", "soups", "sr_ste", "bdwp", "pgf", "sparse_ift")


CASES = (
    [
        (m, net)
        for m in METHODS
        for net in ("mlp", "resnet20")
        if (m, net) != ("hesso_cric", "resnet20")
    ]
    + [(m, "resnet18") for m in ("channel", "rigl", "hesso")]
    + [(m, "lm") for m in LM_METHODS]
)


def _texts(folder: Path) -> Path:
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.txt").write_text(" ".join(f"w{(i * 7 + j) % 50}" for j in range(600)))
    return folder


@pytest.mark.parametrize(("method_name", "model_name"), CASES, ids=[f"{m}-{n}" for m, n in CASES])
def test_method_contract(make_cfg, tmp_path: Path, method_name: str, model_name: str) -> None:
    schedule = FAST_SCHEDULE.get(method_name, [])
    if model_name == "lm":
        schedule = [o for o in schedule if not o.startswith("transform.family")]  # sparse_wide
        schedule.append(f"dataset.data_dir={_texts(tmp_path / 'texts')}")
    overrides = [
        f"+method={method_name}",
        *MODEL_DATA[model_name],
        *schedule,
        f"trainer.limit_train_batches={STEPS.get(method_name, 4)}",
        "trainer.enable_checkpointing=true",
        "logger=none",
    ]
    if method_name == "sparse_ift":  # the preset's method trains at the transform's sparsity
        overrides.append("transform.sparsity=0.8")
    elif method_name not in ("nm", "sr_ste", "pgf", "bdwp"):  # N:M methods: sparsity is 1 - n/m
        overrides.append("method.sparsity=0.8")
    cfg = make_cfg(*overrides)
    model, method, trainer, datamodule, transform = fit_method(cfg, tmp_path)

    densities = method.densities(method.magnitudes())
    if model_name == "lm":  # the decoder's Linears: Sparse-IFT's the (widened) MLP's only
        names = [name for name, _ in method.masks]
        assert all(".layers.0." in n for n in names) and "lm.lm_head" not in names
        assert any(".self_attn." in n for n in names) == (method_name != "sparse_ift")
    for name, module in method.masks:
        mask = getattr(module, MASK)
        assert (module.weight[~mask] == 0).all(), f"{name}: a masked weight is not zero"
        kept = int(mask.sum())
        if isinstance(method.pattern, NM):
            assert is_nm(mask, method.pattern.n, method.pattern.m) and kept == mask.numel() // 2
        elif method.distribution != "global":
            slack = method.pattern.granularity(module.weight.shape)
            assert abs(kept - densities[name] * mask.numel()) <= slack, name
    metrics = model_metrics(model, datamodule.example_input(1), 64, method, transform=transform)
    total = sum(m.weight.numel() for _, m in method.masks)
    slack = sum(
        method.pattern.granularity(m.weight.shape) for _, m in method.masks
    )  # one unit/layer
    if method.distribution == "global" and method.kind == "structured":  # HESSO: channels
        # OTO's budget over all channels, less those a group must keep (one at least).
        removed = sum(int(p.sum()) for p in method.pruned)
        budget = int(metrics["sparsity/target"] * sum(g.size for g in method.groups))
        assert removed == method.target <= budget and removed > 0.95 * budget
        assert all(not p.all() for p in method.pruned)
    else:
        assert metrics["sparsity/actual"] == pytest.approx(
            metrics["sparsity/target"], abs=slack / total
        )
    if transform is not None:  # Sparse-IFT: iso-FLOP with the dense original
        assert abs(metrics["flops/sparse"] / metrics["flops/dense"] - 1) <= 0.01
    else:
        assert metrics["flops/sparse"] < metrics["flops/dense"]

    # Resume from the last checkpoint and train one more epoch: masks, weights and optimizer
    # state come back at the start, and masked weights stay zero after more steps.
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    saved_masks = {k: v for k, v in state["state_dict"].items() if k.endswith(MASK)}
    assert len(saved_masks) == len(method.masks)
    probe = RestoredState()
    if method.resumable is not True:  # soups: a run cannot continue mid-way, and says so
        with pytest.raises(ConfigError, match="cannot continue a killed run"):
            fit_method(cfg, tmp_path / "resumed", ckpt=str(ckpt), max_epochs=state["epoch"] + 2)
        return
    resumed, method2, _, _, _ = fit_method(
        cfg, tmp_path / "resumed", ckpt=str(ckpt), max_epochs=state["epoch"] + 2, extra=[probe]
    )
    if method.fit_strategy == "rounds":  # IMP: its checkpoint is of the last round, finished
        assert method2.level == method.levels and method2.snapshot is not None
        for name, _ in method.masks:
            assert torch.equal(method2.masks.mask(name), method.masks.mask(name))
        return
    for key, mask in saved_masks.items():
        module_name = key.removeprefix("model.").removesuffix("." + MASK)
        assert torch.equal(probe.buffers[key], mask)
        assert (
            resumed.get_submodule(module_name).weight[
                ~getattr(resumed.get_submodule(module_name), MASK)
            ]
            == 0
        ).all()
    saved_opt = state["optimizer_states"][0]["state"]
    assert saved_opt and probe.optimizer.keys() == saved_opt.keys()
    for p_id, values in saved_opt.items():
        restored = probe.optimizer[p_id]
        assert all(
            torch.equal(v, restored[k]) for k, v in values.items() if isinstance(v, torch.Tensor)
        )


class RestoredState(L.Callback):
    """Captures masks and optimizer state as restored, before the resumed run trains."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.buffers = {k: v.clone() for k, v in pl_module.state_dict().items() if k.endswith(MASK)}
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict()["state"])


def test_method_options_are_validated_before_training(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"method.sparsity must be in \[0.0, 1.0\), got 1.5"):
        build_method(make_cfg("+method=rigl", "method.sparsity=1.5"))
    with pytest.raises(
        ConfigError, match="method.distribution must be one of uniform, uniform_plus"
    ):
        build_method(make_cfg("+method=random", "method.distribution=zipf"))
    with pytest.raises(ConfigError, match="N:M sparsity needs 0 < N < M, got 4:2"):
        build_method(make_cfg("+method=nm", "method.pattern=4:2"))
    with pytest.raises(
        ConfigError, match="method 'nm' produces nm sparsity; method.pattern=block1x4"
    ):
        build_method(make_cfg("+method=nm", "method.pattern=block1x4"))
    with pytest.raises(ConfigError, match="method.pattern must be unstructured, channel, N:M"):
        build_method(make_cfg("+method=rigl", "method.pattern=2x4"))
    with pytest.raises(ConfigError, match="unknown key 'method.drop_frac'; method takes: name, "):
        validate(make_cfg("+method=rigl", "+method.drop_frac=0.1"))  # the schema's keys


@pytest.mark.parametrize(
    ("pattern", "check"),
    [
        (
            "block1x4",
            lambda mask: bool(
                (as_matrix(mask).reshape(mask.shape[0], -1, 4).float().std(-1) == 0).all()
            ),
        ),
        (
            "channel",
            lambda mask: bool((mask.reshape(mask.shape[0], -1).float().std(-1) == 0).all()),
        ),
    ],
)
def test_patterns_compose_with_methods(make_cfg, tmp_path: Path, pattern: str, check) -> None:
    cfg = make_cfg(
        "+method=magnitude",
        "method.distribution=uniform",
        f"method.pattern={pattern}",
        "method.sparsity=0.75",
        "model=resnet20",
        "dataset=synthetic",
        "logger=none",
    )
    _, method, _, _, _ = fit_method(cfg, tmp_path)
    assert method.masks.sparsity() == pytest.approx(0.75, abs=0.01)
    for name, module in method.masks:
        mask = method.masks.mask(name)
        assert check(mask), name  # whole blocks / whole filters kept or removed
        assert (module.weight[~mask] == 0).all()


def test_bdwp_masks_both_matmuls_n_m_on_the_autograd_graph() -> None:
    from torch import nn

    from sparsebench.sparsity.methods.nm import _BDWPForward

    torch.manual_seed(0)
    decay = 2e-4
    for layer, x in (
        (nn.Linear(16, 8), torch.randn(5, 16)),
        (nn.Conv2d(8, 12, 3, padding=1), torch.randn(2, 8, 6, 6)),
    ):
        layer.forward = types.MethodType(_BDWPForward(NM(2, 4), decay), layer)
        x.requires_grad_(True)
        y = layer(x)
        assert type(y.grad_fn).__name__ == "_BDWPFunctionBackward"
        _, weight, w_forward, w_backward, forward_mask = y.grad_fn.saved_tensors
        assert is_nm(w_forward != 0, 2, 4)  # along the input dimension: the forward's reduction
        assert is_nm((w_backward != 0).transpose(0, 1), 2, 4)  # along outputs: dx's reduction
        assert not torch.equal(w_forward != 0, w_backward != 0)
        grad = torch.randn_like(y)
        y.backward(grad)
        if isinstance(layer, nn.Linear):
            expected_x, dense_w = grad @ w_backward, grad.t() @ x.detach()
        else:
            expected_x = torch.nn.grad.conv2d_input(x.shape, w_backward, grad, padding=1)
            dense_w = torch.nn.grad.conv2d_weight(x.detach(), weight.shape, grad, padding=1)
        assert torch.allclose(x.grad, expected_x, atol=1e-5)  # the input gradient is N:M-sparse
        # the weight gradient is dense, plus SR-STE's term on the weights the forward masked
        assert torch.allclose(
            layer.weight.grad, dense_w + decay * ~forward_mask * weight, atol=1e-5
        )


def test_bdwp_training_flops_are_a_hand_count(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "+method=bdwp",
        "model=mlp",
        "model.hidden_dims=[64,64]",
        "dataset=digits",
        "dataset.input_shape=[1,8,8]",
        "trainer.limit_train_batches=2",
        "logger=none",
    )
    model, method, _, datamodule, _ = fit_method(cfg, tmp_path, max_epochs=1)
    metrics = model_metrics(model, datamodule.example_input(1), 100, method)
    dense = 2 * (64 * 64 + 64 * 64 + 64 * 10)  # stem, the 2:4 layer, head (multiply-adds x 2)
    sparse = 2 * (64 * 64 + 64 * 64 // 2 + 64 * 10)
    assert (metrics["flops/dense"], metrics["flops/sparse"]) == (dense, sparse)
    # forward and input gradient at 2:4, weight gradient dense, per sample
    assert metrics["flops/train"] == 100 * (sparse + sparse + dense)
    with pytest.raises(
        ConfigError,
        match="BDWP prunes W\\^T 2:4 too: every pruned layer needs its output dimension divisible by 4",
    ):
        fit_method(
            make_cfg(
                "+method=bdwp",
                "model=mlp",
                "model.hidden_dims=[64,66]",
                "dataset=digits",
                "dataset.input_shape=[1,8,8]",
                "logger=none",
            ),
            tmp_path / "bad",
        )


# Every training method that takes a pattern, with the 4x1 group pattern (blocks of 4 output
# channels at one input position: what cpu_sparse's direct4x1 kernel runs).
GROUP_METHODS = ["magnitude", "gmp", "imp", "random", "rigl", "set", "iss_p", "soups"]


@pytest.mark.parametrize("method_name", GROUP_METHODS)
def test_group_pattern_with_every_method(make_cfg, tmp_path: Path, method_name: str) -> None:
    cfg = make_cfg(
        f"+method={method_name}",
        "method.pattern=block4x1",
        "method.sparsity=0.75",
        *MODEL_DATA["resnet20"],
        *FAST_SCHEDULE.get(method_name, []),
        "trainer.limit_train_batches=4",
        "logger=none",
    )
    _, method, _, _, _ = fit_method(cfg, tmp_path)
    assert method.pattern.label == "block4x1"
    for name, module in method.masks:
        mask = method.masks.mask(name)
        groups = as_matrix(mask).reshape(mask.shape[0] // 4, 4, -1).float()
        assert (groups.std(1) == 0).all(), name  # 4 output channels keep or drop together
        assert (module.weight[~mask] == 0).all()
    assert method.masks.sparsity() == pytest.approx(0.75, abs=0.02)


class _Killed(Exception):
    pass


class _StopAtRound(L.Callback):
    """Stands for a kill: the run stops as round ``level`` of IMP starts."""

    def __init__(self, method, level: int) -> None:
        self.method, self.level = method, level

    def on_train_start(self, trainer, pl_module) -> None:
        if self.method.level == self.level:
            raise _Killed


def test_imp_resumes_from_the_round_its_checkpoint_was_written_in(make_cfg, tmp_path: Path) -> None:
    overrides = [
        "+method=imp",
        "method.rate=0.5",
        *MODEL_DATA["mlp"],
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.enable_checkpointing=true",
        "logger=none",
    ]
    _, whole, trainer, _, _ = fit_method(make_cfg(*overrides), tmp_path / "whole")
    assert whole.level == whole.levels == 3
    assert "val/acc" in trainer.callback_metrics  # validated, though rounds end mid-epoch
    cfg = make_cfg(*overrides)
    L.seed_everything(0, verbose=False)  # the same run as _fit's, stopped
    datamodule = build_datamodule(cfg)
    method = build_method(cfg)
    module = build_module(cfg, build_run_model(cfg, datamodule, method, None))
    callbacks = [*sparsity_callbacks(method), _StopAtRound(method, 2)]
    with pytest.raises(_Killed):
        fit(module, datamodule, method, cfg, tmp_path / "killed", callbacks)
    ckpt = tmp_path / "killed" / "checkpoints" / "last.ckpt"  # written at the end of round 1
    saved = torch.load(ckpt, weights_only=True)["callbacks"]["SparsityCallback"]["method"]
    assert saved["level"] == 1 and saved["snapshot"] is not None
    _, resumed, _, _, _ = fit_method(make_cfg(*overrides), tmp_path / "resumed", ckpt=str(ckpt))
    assert resumed.level == 3
    for name, _ in whole.masks:
        assert torch.equal(resumed.masks.mask(name), whole.masks.mask(name)), name
