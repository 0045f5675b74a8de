"""Sparse training kernels (trainer.sparse_kernels): the products of a step at the mask's
nonzeros equal the dense masked ones, and whole runs reach the same masks and weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.record.identity import run_hash
from sparsebench.sparsity.kernels import SparseKernel
from sparsebench.sparsity.masks import MASK, MaskSet
from sparsebench.training.kernels import SparseKernels
from tests.fixtures import compose_config, fit_method


def test_a_step_at_the_nonzeros_is_the_dense_masked_step() -> None:
    torch.manual_seed(0)
    dense, sparse = nn.Linear(40, 30), nn.Linear(40, 30)
    sparse.load_state_dict(dense.state_dict())
    masks = [MaskSet({"a": dense}), MaskSet({"b": sparse})]
    for mask in (torch.rand(30, 40) > 0.8, torch.rand(30, 40) > 0.5):  # then a mask update
        for masks_, name in zip(masks, "ab", strict=True):
            masks_.set(name, mask)
        kernel = SparseKernel(sparse)
        x = torch.randn(7, 5, 40, requires_grad=True)  # tokens: (batch, sequence, features)
        x2 = x.detach().clone().requires_grad_()
        grad = torch.randn(7, 5, 30)
        dense.zero_grad(set_to_none=True), sparse.zero_grad(set_to_none=True)
        dense(x).backward(grad)
        sparse(x2).backward(grad)
        assert torch.allclose(dense(x), sparse(x2), atol=1e-5)
        assert torch.allclose(x.grad, x2.grad, atol=1e-5)
        assert torch.allclose(dense.weight.grad * mask, sparse.weight.grad, atol=1e-5)
        assert (sparse.weight.grad[~mask] == 0).all()  # masked weights get no gradient
        assert torch.allclose(dense.bias.grad, sparse.bias.grad, atol=1e-5)
        kernel.dense_grad = True  # RigL's grow step: the gradient of every weight
        sparse.weight.grad = None
        sparse(x2).backward(grad)
        assert torch.allclose(dense.weight.grad, sparse.weight.grad, atol=1e-5)
        kernel.remove()


FAST = ["model=mlp", "dataset=digits", "model.hidden_dims=[256,256]", "logger=none"]
SCHEDULES = {
    "random": [],
    "set": ["method.update_interval=10"],
    "rigl": ["method.update_interval=10"],
    "gmp": ["method.update_interval=10", "method.start=0.0", "method.end=0.7"],
}


@pytest.mark.parametrize("method_name", list(SCHEDULES))
def test_runs_with_the_kernels_reach_the_masks_and_weights_of_dense_kernels(
    tmp_path: Path, method_name: str
) -> None:
    runs = {}
    for kernels in ("off", "on"):
        cfg = compose_config(
            [*FAST, f"+method={method_name}", "method.sparsity=0.9", *SCHEDULES[method_name]]
            + ["trainer.enable_checkpointing=false", f"trainer.sparse_kernels={kernels}"],
            output_dir=tmp_path / kernels,
        )
        runs[kernels] = fit_method(cfg, tmp_path / kernels, max_epochs=6)  # 138 steps
        runs[kernels + "_hash"] = run_hash(cfg)
    (off, method, *_), (on, _, trainer, *_) = runs["off"], runs["on"]
    assert runs["off_hash"] == runs["on_hash"]  # how a step is computed is not the run
    (chosen,) = [c for c in trainer.callbacks if isinstance(c, SparseKernels)]
    assert chosen.choices == dict.fromkeys(dict(method.masks), "sparse")
    for (name, a), b in zip(off.named_modules(), on.modules(), strict=True):
        if hasattr(a, MASK):
            assert torch.equal(getattr(a, MASK), getattr(b, MASK)), name
        for key, p in a.named_parameters(recurse=False):
            assert torch.allclose(p, getattr(b, key), atol=1e-4), f"{name}.{key}"
    assert type(on.features[4]).forward is nn.Linear.forward  # the kernels are taken off


def test_the_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="trainer.sparse_kernels must be one of off, on, auto"):
        from sparsebench.config.checks import validate

        validate(compose_config(["trainer.sparse_kernels=fast"]))


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
