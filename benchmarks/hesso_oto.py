"""Our HESSO and HESSO-CRIC beside Only-Train-Once's own optimizers, on identical inputs.

OTO's ``HESSO`` / ``HESSOCRIC`` (``only_train_once/optimizer/``) are imported from a checkout of
microsoft/only_train_once (nothing is copied here) and given our channel groups in OTO's
param-group form (OTO's own graph does not import on torch 2.14: ``torch.onnx._globals`` is
gone; its ResNet-18 partition is the same 12 groups / 2880 channels, which the test suite checks
for ours). Both optimizers then train two copies of one network on the same batches: ours
through the training loop's hooks around ``torch.optim.SGD``, OTO's by its ``step()``.

Rows: ``lr 0`` keeps the network fixed (the only changes are the methods' projections and
resets), so both see the same gradients at every step: the selection rules, saliency and
projections are compared exactly. ``lr 0.1`` trains: torch's SGD adds the weight decay in one
fused operation where OTO rounds wd x p first; that last-bit difference grows through training
(chaotic on random data), which the third row shows by adding the decay as OTO does.

Printed: for every selection (one per pruning period; CRIC's final choice) the agreement of
the chosen channels (|ours & OTO| / |ours | OTO|) and of the per-channel decision over all
channels, and at the end the largest relative difference of any parameter.

    git clone https://github.com/microsoft/only_train_once /tmp/oto   # or any checkout
    python -m benchmarks.hesso_oto --oto /tmp/oto                      # goal: >= 95% agreement
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
from pathlib import Path

import timm
import torch
from torch import nn

import sparsebench.models.small  # noqa: F401  (registers resnet20 with timm)
from sparsebench.sparsity.methods import HESSO, HESSOCRIC


def import_oto(path: Path):
    """OTO's optimizer package without its top-level ``__init__`` (which imports its graph)."""
    package = types.ModuleType("only_train_once")
    package.__path__ = [str(path / "only_train_once")]
    sys.modules["only_train_once"] = package
    from only_train_once.optimizer.hesso import HESSO as OtoHESSO
    from only_train_once.optimizer.hesso_cric import HESSOCRIC as OtoCRIC
    from only_train_once.transform import TensorTransform

    return OtoHESSO, OtoCRIC, TensorTransform


def oto_param_groups(model: nn.Module, method: HESSO, transform) -> list[dict]:
    """``method``'s groups over ``model``'s parameters (a twin of the model it is attached to,
    found by name) as OTO's ``graph.get_param_groups()`` writes them, plus one unprunable
    group with every other parameter (the classifier, skipped groups)."""
    params = dict(model.named_parameters())

    def group(gid, size, names, prunable):
        return {
            "id": gid,
            "num_groups": size,
            "is_prunable": prunable,
            "is_auxiliary": False,
            "p_names": names,
            "params": [params[n] for n in names],
            "op_names": ["op"] * len(names),
            "p_transform": [transform.BASIC if prunable else transform.NO_PRUNE] * len(names),
            "auxiliary_ngs": [],
            "node_ids": [gid] * len(names),
        }

    out = [group(f"g{i:03d}", g.size, g.names, True) for i, g in enumerate(method.groups)]
    grouped = {n for g in method.groups for n in g.names}
    out.append(group("rest", 1, [n for n in params if n not in grouped], False))
    return out


def batches(count: int, shape: tuple[int, ...], classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(32, *shape, generator=gen), torch.randint(0, classes, (32,), generator=gen))
        for _ in range(count)
    ]


class Ours:
    """Our method on ``model`` through the training loop's hooks around torch's SGD."""

    def __init__(self, model, cric: bool, steps: int, example, lr: float, oto_decay: bool) -> None:
        self.model = model
        if cric:
            self.method = HESSOCRIC(sparsity=0.5, start=0.05, sampling_steps=5, hybrid=0.1)
        else:
            self.method = HESSO(sparsity=0.5, start=0.1, end=0.5, periods=4)
        self.method.bind(steps)
        self.method.attach(model, example)
        # oto_decay: the weight decay added to the gradient as OTO writes it (g + (wd x p), two
        # roundings) rather than by torch's SGD (one fused add): the same arithmetic otherwise.
        self.decay = 1e-4 if oto_decay else 0.0
        self.opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4 - self.decay
        )
        self.method.optimizer = self.opt
        self.n = 0

    def step(self, x, y) -> None:
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.method.observe_loss(self.n, loss.detach())
        self.opt.zero_grad()
        loss.backward()
        if self.decay:  # before the direction is read, as OTO folds it in
            for p in self.model.parameters():
                p.grad.add_(self.decay * p.detach())
        self.method.after_backward(self.n)
        self.method.mask_grads()
        self.opt.step()
        self.n += 1
        self.method.after_step(self.n)
        self.method.apply()

    def chosen(self) -> set[int]:
        out, offset = set(), 0
        for pruned, active in zip(self.method.pruned, self.method.active, strict=True):
            out |= {offset + int(i) for i in (pruned | active).nonzero().view(-1)}
            offset += pruned.numel()
        return out


class Oto:
    """OTO's optimizer on ``model`` (a twin of ``ours``'s) with ``ours``'s groups and steps."""

    def __init__(self, model, ours: Ours, oto_path: Path, lr: float) -> None:
        oto_hesso, oto_cric, transform = import_oto(oto_path)
        self.model, method = model, ours.method
        groups = oto_param_groups(model, method, transform)
        common = dict(variant="sgd", lr=lr, first_momentum=0.9, weight_decay=1e-4)
        if isinstance(method, HESSOCRIC):
            self.opt = oto_cric(
                params=groups,
                target_group_sparsity=0.5,
                start_cric_step=method.begin,
                sampling_steps=method.sampling,
                max_cycle_period=method.max_cycles,
                hybrid_training_steps=method.hybrid_steps,
                tolerance=0,
                **common,
            )
        else:
            start, length = method.span
            self.opt = oto_hesso(
                params=groups,
                target_group_sparsity=0.5,
                start_pruning_step=start,
                pruning_steps=length * method.periods,
                pruning_periods=method.periods,
                device="cpu",
                **common,
            )

    def step(self, x, y) -> None:
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step(loss=loss)

    def chosen(self) -> set[int]:
        out, offset = set(), 0
        for group in self.opt.param_groups:
            if group["is_prunable"] and not group["is_auxiliary"]:
                idx = set(group.get("pruned_idxes", [])) | set(
                    group.get("active_redundant_idxes", [])
                )
                out |= {offset + int(i) for i in idx}
                offset += group["num_groups"]
        return out


def agreement(a: set[int], b: set[int], total: int) -> tuple[float, float]:
    union = a | b
    jaccard = len(a & b) / len(union) if union else 1.0
    return jaccard, 1 - len(a ^ b) / total


def run(arch: str, cric: bool, lr: float, oto_decay: bool, oto_path: Path, args) -> dict:
    """Ours (``oto_decay``: with OTO's rounding of the weight decay) against OTO's optimizer."""
    steps = args.steps * (3 if cric else 1)  # CRIC's trials take 6 steps per group
    torch.manual_seed(0)
    base = timm.create_model(arch, num_classes=10, in_chans=3).train()
    data = batches(args.warmup + steps, (3, args.size, args.size), 10)
    warm = torch.optim.SGD(base.parameters(), lr=0.05, momentum=0.9)
    for x, y in data[: args.warmup]:  # a trained-ish network, not one at initialisation
        warm.zero_grad()
        nn.functional.cross_entropy(base(x), y).backward()
        warm.step()
    example = data[0][0][:1]
    ours = Ours(copy.deepcopy(base), cric, steps, example, lr, oto_decay)
    other = Oto(copy.deepcopy(base), ours, oto_path, lr)
    total = sum(g.size for g in ours.method.groups)
    picks, last = [], set()
    for x, y in data[args.warmup :]:
        ours.step(x, y)
        other.step(x, y)
        if ours.chosen() != last:  # ours selected: compare with the other's choice now
            last = ours.chosen()
            picks.append((ours.n, *agreement(last, other.chosen(), total), len(last)))
    with torch.no_grad():
        a = torch.cat([p.reshape(-1) for p in ours.model.parameters()])
        b = torch.cat([p.reshape(-1) for p in other.model.parameters()])
    final = agreement(ours.chosen(), other.chosen(), total)
    return {
        "picks": picks,
        "final": final,
        "diff": float((a - b).norm() / b.norm()),
        "total": total,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oto", type=Path, required=True, help="a checkout of only_train_once")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args(argv)
    print(
        "| model | method | lr | weight decay rounded as | selections (step: Jaccard, decisions, chosen) "
        "| final: Jaccard, decisions | params: rel. L2 diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for arch in ("resnet18", "resnet20"):
        for cric in (False, True):
            for lr, oto_decay in ((0.0, False), (0.1, False), (0.1, True)):
                out = run(arch, cric, lr, oto_decay, args.oto, args)
                versus = "OTO" if oto_decay else "torch"
                picks = "; ".join(f"{s}: {j:.3f}, {d:.3f}, {n}" for s, j, d, n in out["picks"])
                print(
                    f"| {arch} {args.size}x{args.size} | {'hesso_cric' if cric else 'hesso'} | "
                    f"{lr} | {versus} | {picks} | {out['final'][0]:.3f}, {out['final'][1]:.3f} "
                    f"of {out['total']} | {out['diff']:.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
