"""Sparse training kernels (trainer.sparse_kernels): the products of a step at the mask's
nonzeros equal the dense masked ones, and whole runs reach the same masks and weights."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.hardware import direct
from sparsebench.hardware import sparse_products as kernels
from sparsebench.hardware.training import SparseKernel
from sparsebench.hardware.update import SparseUpdate, update_refusal
from sparsebench.record.identity import run_hash
from sparsebench.sparsity.masks import MASK, MaskSet
from sparsebench.training import kernels as kernels_callback
from sparsebench.training.kernels import SparseKernels, require_kernels
from tests.fixtures import compose_config, fit_method

LAYERS = {  # (layer, input shape): Linear on tokens, and every convolution case of the kernels
    "linear": (lambda: nn.Linear(40, 30), (7, 5, 40)),
    "3x3": (lambda: nn.Conv2d(8, 12, 3, padding=1), (2, 8, 9, 11)),
    "3x3 stride 2": (lambda: nn.Conv2d(8, 12, 3, stride=2, padding=1), (2, 8, 9, 10)),
    "1x1 stride 2": (lambda: nn.Conv2d(8, 12, 1, stride=2, bias=False), (2, 8, 9, 10)),
    "5x5 dilated": (lambda: nn.Conv2d(8, 12, 5, padding=3, dilation=2), (2, 8, 13, 12)),
    "depthwise": (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 7, 7)),
    "grouped": (lambda: nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4), (2, 8, 9, 9)),
    "3x3 on 1x1": (lambda: nn.Conv2d(16, 8, 3, padding=1), (4, 16, 1, 1)),  # 8 taps read padding
}


@pytest.mark.parametrize("fold", [True, False], ids=["batch folded", "per image"])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_each_product_at_the_nonzeros_is_the_dense_masked_one(
    layer: str, fold: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "FOLD_BELOW", 10**9 if fold else 0)
    torch.manual_seed(0)
    make, shape = LAYERS[layer]
    dense = make()
    sparse = copy.deepcopy(dense)
    masks = [MaskSet({"a": dense}), MaskSet({"b": sparse})]
    for mask in (torch.rand(dense.weight.shape) > 0.8, torch.rand(dense.weight.shape) > 0.5):
        masks[0].set("a", mask), masks[1].set("b", mask)  # the second: a mask update
        kernel = SparseKernel(sparse)
        x = torch.randn(*shape, requires_grad=True)
        x2 = x.detach().clone().requires_grad_()
        dense.zero_grad(set_to_none=True), sparse.zero_grad(set_to_none=True)
        y, y2 = dense(x), sparse(x2)
        grad = torch.randn_like(y)
        y.backward(grad), y2.backward(grad)
        assert torch.allclose(y, y2, atol=1e-5)
        assert torch.allclose(x.grad, x2.grad, atol=1e-5)
        assert torch.allclose(dense.weight.grad * mask, sparse.weight.grad, atol=1e-4)
        assert (sparse.weight.grad[~mask] == 0).all()  # masked weights get no gradient
        if dense.bias is not None:
            assert torch.allclose(dense.bias.grad, sparse.bias.grad, atol=1e-4)
        kernel.dense_grad = True  # RigL's grow step: the gradient of every weight
        sparse.weight.grad = None
        sparse(x2).backward(grad)
        assert torch.allclose(dense.weight.grad, sparse.weight.grad, atol=1e-4)
        kernel.remove()


OPTIMIZERS = {
    "sgd nesterov": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3
    ),
    "sgd dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adam l2": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_update_at_the_nonzeros_is_torchs_and_resumes_from_its_state(name: str) -> None:
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 36, 5))]
    models.append(copy.deepcopy(models[0]))
    masks = [MaskSet({"0": m[0], "2": m[2]}) for m in models]
    for layer in ("0", "2"):
        keep = torch.rand(masks[0].layers[layer].weight.shape) > 0.7
        masks[0].set(layer, keep), masks[1].set(layer, keep)
    optimizers = [OPTIMIZERS[name](m.parameters()) for m in models]
    installed = [SparseKernel(models[1][0]), SparseKernel(models[1][2])]
    for kernel in installed:
        kernel.compact = True
    update = SparseUpdate(optimizers[1], installed)
    batches = [torch.randn(4, 3, 6, 6) for _ in range(6)]

    def steps(which: int, optimizer, count) -> None:
        for x in batches[:count]:
            optimizer.zero_grad(set_to_none=True)
            models[which](x).square().mean().backward()
            masks[which].mask_grads()
            optimizer.step()
            masks[which].apply()

    steps(0, optimizers[0], 3), steps(1, optimizers[1], 3)
    assert update.updates == 6  # both layers, three steps: the update was ours
    # Resumed from the optimizer's state dict, as a checkpoint does.
    update.remove()
    resumed = OPTIMIZERS[name](models[1].parameters())
    resumed.load_state_dict(optimizers[1].state_dict())
    SparseUpdate(resumed, installed)
    steps(0, optimizers[0], 6), steps(1, resumed, 6)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        state, ours = optimizers[0].state[a], resumed.state[b]
        for key in state:
            assert torch.allclose(state[key], ours[key], atol=1e-5), key


def test_an_optimizer_without_an_update_at_the_nonzeros_is_named() -> None:
    params = [nn.Parameter(torch.zeros(3))]
    assert update_refusal(torch.optim.SGD(params, lr=0.1)) is None
    assert "amsgrad=True" in update_refusal(torch.optim.Adam(params, amsgrad=True))
    assert "RMSprop has no update" in update_refusal(torch.optim.RMSprop(params))


FAST = ["model=mlp", "dataset=digits", "model.hidden_dims=[256,256]", "logger=none"]
SCHEDULES = {
    "random": [],
    "set": ["method.update_interval=10"],
    "rigl": ["method.update_interval=10"],
    "gmp": ["method.update_interval=10", "method.start=0.0", "method.end=0.7"],
}


# ResNet-20 on digits is chaotic: its dense runs on 1 and on 2 threads (sums in another order)
# differ by 6e-5 after 3 steps and 0.06 after 23 (BatchNorm over 2x2
# maps amplifies rounding), so its runs are compared over 2 steps, the masks updated at the second.
MODELS = {
    "mlp": (FAST, [], 6),
    "resnet20": (
        ["model=resnet20", "dataset=digits", "logger=none", "trainer.limit_train_batches=2"]
        + ["trainer.limit_val_batches=1"],
        ["method.update_interval=1"],
        1,
    ),
}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("method_name", list(SCHEDULES))
def test_runs_with_the_kernels_reach_the_masks_and_weights_of_dense_kernels(
    tmp_path: Path, method_name: str, model: str
) -> None:
    runs = {}
    overrides, schedule, epochs = MODELS[model]
    for kernels_ in ("off", "on"):
        cfg = compose_config(
            [*overrides, f"+method={method_name}", "method.sparsity=0.9"]
            + SCHEDULES[method_name]
            + (schedule if method_name != "random" else [])
            + ["trainer.enable_checkpointing=false", f"trainer.sparse_kernels={kernels_}"],
            output_dir=tmp_path / kernels_,
        )
        runs[kernels_] = fit_method(cfg, tmp_path / kernels_, max_epochs=epochs)  # MLP: 138 steps
        runs[kernels_ + "_hash"] = run_hash(cfg)
    (off, method, *_), (on, _, trainer, *_) = runs["off"], runs["on"]
    assert runs["off_hash"] == runs["on_hash"]  # how a step is computed is not the run
    (chosen,) = [c for c in trainer.callbacks if isinstance(c, SparseKernels)]
    assert chosen.choices == dict.fromkeys(dict(method.masks), "sparse")
    assert chosen.updates > 0  # the optimizer's update was made at the nonzeros
    for name, steps in chosen.section()["steps"].items():
        if model == "mlp":  # RigL's grow steps (every 10 of 138): the dense gradient
            assert (steps["dense gradient"] > 0) == (method_name == "rigl"), steps
        masked = not bool(getattr(dict(on.named_modules())[name], MASK).all())
        assert (steps["sparse"] > 0) == masked, (name, steps)  # ERK may leave a layer dense
        # Dense forwards only while nothing was masked (GMP before its first prune).
        assert (steps["dense"] == 0) or method_name == "gmp" or not masked, (name, steps)
    for (name, a), b in zip(off.named_modules(), on.modules(), strict=True):
        if hasattr(a, MASK):
            assert torch.equal(getattr(a, MASK), getattr(b, MASK)), name
            assert "forward" not in vars(b)  # the kernels are taken off
        for key, p in a.named_parameters(recurse=False):
            assert torch.allclose(p, getattr(b, key), atol=1e-4), f"{name}.{key}"
        for key, buffer in a.named_buffers(recurse=False):  # BatchNorm's running statistics
            assert torch.allclose(buffer.float(), getattr(b, key).float(), atol=1e-4), key


def test_the_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="trainer.sparse_kernels must be one of off, on, auto"):
        from sparsebench.config.checks import validate

        validate(compose_config(["trainer.sparse_kernels=fast"]))


def test_without_a_compiler_the_kernels_are_refused_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler")
    uncached = direct.sparse_rows_op.__wrapped__  # the build itself, not its cached result
    monkeypatch.setattr(kernels_callback, "sparse_rows_op", uncached)
    with pytest.raises(ConfigError, match=r"'no-such-compiler' is not on PATH.*sparse_kernels=off"):
        require_kernels("on")
    require_kernels("off")  # dense training needs no compiler


def test_auto_times_each_layer_at_its_shape_and_says_why_a_layer_stays_dense(
    tmp_path: Path,
) -> None:
    cfg = compose_config(
        [*FAST, "+method=random", "method.sparsity=0.9", "trainer.sparse_kernels=auto"]
        + ["trainer.enable_checkpointing=false", "trainer.limit_train_batches=2"],
        output_dir=tmp_path,
    )
    _, method, trainer, *_ = fit_method(cfg, tmp_path, max_epochs=1)
    (chosen,) = [c for c in trainer.callbacks if isinstance(c, SparseKernels)]
    assert set(chosen.choices) == set(dict(method.masks))
    for choice in chosen.choices.values():  # either way, decided by its own timing
        assert choice == "sparse" or choice.startswith("dense (the sparse kernels were ")


def test_a_run_records_its_training_speed_up_in_results_mlflow_and_the_leaderboard(
    make_cfg, tmp_path: Path
) -> None:
    import json

    from sparsebench.leaderboard.read import read_runs
    from sparsebench.leaderboard.rows import aggregate
    from sparsebench.runners.train import run

    cfg = make_cfg("model=mlp", "dataset=digits", "+method=rigl", "method.sparsity=0.9")
    cfg.method.update_interval, cfg.trainer.sparse_kernels = 1, "on"
    run(cfg)
    data = json.loads((tmp_path / "run/results.json").read_text())
    metrics = data["metrics"]
    ratio = metrics["time/dense_step_ms"] / metrics["time/sparse_step_ms"]
    assert metrics["speedup/train_measured"] == pytest.approx(ratio)
    assert data["tags"]["train/step_noisy"] in ("true", "false")
    steps = data["kernels_train"]["steps"]
    assert steps and all(s["sparse"] > 0 and s["dense gradient"] > 0 for s in steps.values())
    (row,) = aggregate(read_runs(f"sqlite:///{tmp_path}/mlflow.db", None, {}))
    assert row.train_speedup == pytest.approx(metrics["speedup/train_measured"])
