"""Dynamic sparse training's mask update (RigL, SET): rigl's own op, seeded, counts kept."""

from __future__ import annotations

import numpy as np
import torch

from sparsebench.sparsity.methods import SET, RigL
from tests.fixtures import toy_model


def _dst(cls, optimizer: bool = True):
    model = toy_model()
    method = cls(
        sparsity=0.5,
        distribution="uniform",
        drop_fraction=0.3,
        update_interval=1,
        end=1.0,
        dense_stem=False,
        dense_head=False,
    )
    method.bind(100)
    method.attach(model)
    method.init_masks()
    if optimizer:
        method.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, method


def test_rigl_grows_as_many_as_it_drops_where_gradients_are_largest() -> None:
    model, rigl = _dst(RigL)
    model(torch.randn(32, 6)).pow(2).mean().backward()
    rigl.optimizer.step()  # momentum buffers exist, so the reset is visible
    rigl.masks.apply()
    before = {name: rigl.masks.mask(name).clone() for name, _ in rigl.masks}
    grads = {name: m.weight.grad.clone() for name, m in rigl.masks}
    moved = rigl.drop_and_grow(step=1)
    for name, module in rigl.masks:
        after = rigl.masks.mask(name)
        assert int(after.sum()) == int(before[name].sum())  # constant per layer
        grown = after & ~before[name]
        dropped = before[name] & ~after
        assert int(grown.sum()) == int(dropped.sum()) <= moved[name]
        assert moved[name] == int(rigl.schedule.cosine(1, 0.3) * int(before[name].sum()))  # floor
        assert (module.weight[grown] == 0).all()
        momentum = rigl.optimizer.state[module.weight]["momentum_buffer"]
        assert (momentum[grown] == 0).all()
        if grown.any():  # grown where |grad| is largest among positions not kept
            candidates = grads[name].abs()[~(before[name] & after)]
            assert (
                grads[name].abs()[grown].min() >= torch.topk(candidates, moved[name]).values.min()
            )


def _rigl_update_op(score_drop, score_grow, mask, drop_fraction):
    """A straight translation of rigl's ``_get_update_op`` (google-research/rigl
    sparse_optimizers.py) to numpy: tf.math.top_k over the whole array, ties to the lower index
    (a stable sort of the negated scores)."""
    n_total = score_drop.size
    n_ones = int(mask.sum())
    n_prune = int(np.float32(n_ones) * np.float32(drop_fraction))
    n_keep = n_ones - n_prune
    sorted_indices = np.argsort(-score_drop.reshape(-1), kind="stable")
    mask1 = np.zeros(n_total)
    mask1[sorted_indices[:n_keep]] = 1
    score_grow = score_grow.reshape(-1)
    lifted = np.where(mask1 == 1, score_grow.min() - 1, score_grow)
    mask2 = np.zeros(n_total)
    mask2[np.argsort(-lifted, kind="stable")[:n_prune]] = 1
    new_connections = (mask2 == 1) & (mask.reshape(-1) == 0)
    return (mask1 + mask2).reshape(mask.shape), new_connections.reshape(mask.shape)


def test_rigl_updates_masks_as_rigl_s_own_op_and_keeps_what_it_regrows_in_place() -> None:
    model, rigl = _dst(RigL)
    model(torch.randn(32, 6)).pow(2).mean().backward()
    rigl.optimizer.step()
    rigl.masks.apply()
    for step in (1, 2, 3):
        model.zero_grad()
        model(torch.randn(32, 6)).pow(2).mean().backward()
        before = {n: rigl.masks.mask(n).clone() for n, _ in rigl.masks}
        weights = {n: m.weight.detach().clone() for n, m in rigl.masks}
        states = {
            n: rigl.optimizer.state[m.weight]["momentum_buffer"].clone() for n, m in rigl.masks
        }
        fraction = rigl.schedule.cosine(step, 0.3)
        expected = {}
        for name, module in rigl.masks:  # the same drop noise as the method draws
            noise = torch.randn(module.weight.shape, generator=rigl.layer_generator(name, step + 2))
            drop = module.weight.detach().abs() + 1e-5 * noise
            drop = torch.where(before[name], drop, -torch.inf).numpy()  # inactive: never kept
            grow = module.weight.grad.abs().numpy()
            expected[name] = _rigl_update_op(drop, grow, before[name].numpy(), fraction)
        rigl.drop_and_grow(step)
        for name, module in rigl.masks:
            mask, new = expected[name]
            assert np.array_equal(rigl.masks.mask(name).numpy(), mask == 1), (step, name)
            new = torch.from_numpy(new)
            again = before[name] & rigl.masks.mask(name)  # kept, or dropped and grown in place
            assert torch.equal(module.weight[again], weights[name][again])
            momentum = rigl.optimizer.state[module.weight]["momentum_buffer"]
            assert torch.equal(momentum[again], states[name][again])
            assert (module.weight[new] == 0).all() and (momentum[new] == 0).all()


def test_set_growth_is_seeded_so_ranks_agree() -> None:
    masks, weights = [], []
    for _ in range(2):
        _, method = _dst(SET, optimizer=False)
        before = {name: method.masks.mask(name).clone() for name, _ in method.masks}
        method.drop_and_grow(step=3)
        masks.append({name: method.masks.mask(name).clone() for name, _ in method.masks})
        weights.append({name: m.weight.detach().clone() for name, m in method.masks})
        for name, module in method.masks:  # grown weights get random nonzero values (Mocanu 2018)
            grown = masks[-1][name] & ~before[name]
            assert grown.any() and (module.weight[grown] != 0).all()
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
