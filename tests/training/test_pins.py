"""Same results before and after a refactor: for a fixed seed, the final masks (a digest of
every ``weight_mask``) and the test accuracy of a few methods on mlp/MNIST-1D are pinned, as
are the run hashes of a few configs (tests/record/test_identity.py pins more)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from sparsebench.sparsity.masks import MASK
from sparsebench.training import measure as measuring

BASE = (
    "model=mlp",
    "dataset=mnist1d",
    "logger=none",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=6",
)

# method -> (overrides, digest of the final masks, test/acc); written by the code before the
# architecture change of issue 14 and unchanged by it. RigL's (and Sparse-IFT's, which trains
# with RigL) were rewritten when its update became rigl's own op (issue 27: floor of the count
# moved, drop ties by noise, regrown-in-place connections kept).
PINNED = {
    "random": (("+method=random",), "b9ef6cab71c2bdff", 0.267578125),
    "rigl": (("+method=rigl", "method.update_interval=2"), "2bbab62de59e1095", 0.25),
    "nm": (("+method=nm",), "c496edc8f242101b", 0.24609375),
    "sparse_ift": (
        ("+method=sparse_ift", "method.update_interval=2"),
        "28cd58ee6f74d2fb",
        0.279296875,
    ),
    "wanda": (("+method=wanda", "runner=prune"), "423addbc9ccb50e0", 0.25),
}


def mask_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, module in sorted(model.named_modules()):
        mask = getattr(module, MASK, None)
        if isinstance(mask, torch.Tensor):
            digest.update(name.encode())
            digest.update(mask.to(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_final_masks_and_accuracy_are_pinned(name: str, make_cfg, monkeypatch) -> None:
    overrides, digest, accuracy = PINNED[name]
    seen: list[nn.Module] = []
    measure = measuring.measure

    def capture(results, run, model, *args, **kwargs):
        seen.append(model)
        return measure(results, run, model, *args, **kwargs)

    cfg = make_cfg(*BASE, *overrides)
    if cfg.runner == "prune":
        from sparsebench.runners.prune import run

        monkeypatch.setattr("sparsebench.runners.prune.measure", capture)
    else:
        from sparsebench.runners.train import run

        monkeypatch.setattr("sparsebench.runners.train.measure", capture)
    metrics = run(cfg).metrics
    found = (mask_digest(seen[-1]), metrics["test/acc"])
    print(f"PIN {name}: {found!r}")
    assert found == (digest, accuracy)
