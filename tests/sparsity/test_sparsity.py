"""Hand-computed unit tests of masks, patterns, distributions, schedules and RigL/SET updates."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.sparsity.distributions import layer_densities
from sparsebench.sparsity.masks import MaskError, MaskSet
from sparsebench.sparsity.methods import GradualMagnitudePruning
from sparsebench.sparsity.patterns import NM, Block, Channel, Unstructured, is_nm
from sparsebench.sparsity.schedules import Schedule, cubic_sparsity, imp_density
from tests.fixtures import toy_model

TOY = {"a": torch.Size([8, 4]), "b": torch.Size([8, 8]), "c": torch.Size([2, 8])}


def test_er_densities_hand_computed() -> None:
    # raw = (in + out) / (in * out): a 12/32, b 16/64, c 10/16; sizes 32, 64, 16; kept = 56.
    eps = 56 / (12 + 16 + 10)
    got = layer_densities(TOY, 0.5, "er")
    assert got == pytest.approx({"a": eps * 12 / 32, "b": eps * 16 / 64, "c": eps * 10 / 16})


def test_er_resolves_layers_that_would_exceed_density_one() -> None:
    # At 20% sparsity c would get 1.47: it is made dense and the rest re-solved.
    eps = (0.8 * 112 - 16) / (12 + 16)
    got = layer_densities(TOY, 0.2, "er")
    assert got == pytest.approx({"a": eps * 12 / 32, "b": eps * 16 / 64, "c": 1.0})
    assert sum(got[n] * TOY[n].numel() for n in TOY) == pytest.approx(0.8 * 112)


def test_erk_uses_every_dimension_and_power() -> None:
    shapes = {"conv": torch.Size([4, 2, 3, 3]), "fc": torch.Size([10, 8])}
    raw = {"conv": (4 + 2 + 3 + 3) / 72, "fc": 18 / 80}
    eps = (0.5 * 152) / (raw["conv"] * 72 + raw["fc"] * 80)
    assert layer_densities(shapes, 0.5, "erk") == pytest.approx(
        {n: eps * r for n, r in raw.items()}
    )
    raw2 = {n: r**2 for n, r in raw.items()}
    eps2 = (0.5 * 152) / (raw2["conv"] * 72 + raw2["fc"] * 80)
    assert layer_densities(shapes, 0.5, "erk", power=2.0) == pytest.approx(
        {n: eps2 * r for n, r in raw2.items()}
    )


def test_uniform_plus_keeps_last_layer_at_20_percent() -> None:
    got = layer_densities(TOY, 0.9, "uniform_plus")
    assert got["c"] == 0.2
    assert sum(got[n] * TOY[n].numel() for n in TOY) == pytest.approx(0.1 * 112)
    assert layer_densities(TOY, 0.5, "uniform_plus") == {n: 0.5 for n in TOY}


def test_global_distribution_is_one_threshold() -> None:
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([5.0, 6.0, 0.5, 0.1])}
    got = layer_densities({n: s.shape for n, s in scores.items()}, 0.5, "global", scores=scores)
    assert got == {"a": 0.5, "b": 0.5}  # kept: 3, 4, 5, 6


def test_unknown_distribution_and_bad_sparsity() -> None:
    with pytest.raises(ConfigError, match="unknown distribution 'zipf'; available: uniform"):
        layer_densities(TOY, 0.5, "zipf")
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\), got 1.0"):
        layer_densities(TOY, 1.0)


def test_gmp_cubic_schedule_at_start_midway_end() -> None:
    assert cubic_sparsity(0, 0.9, 100, 300, 10) == 0.0  # before t0
    assert cubic_sparsity(100, 0.9, 100, 300, 10) == 0.0  # at t0
    assert cubic_sparsity(200, 0.9, 100, 300, 10) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert cubic_sparsity(205, 0.9, 100, 300, 10) == cubic_sparsity(200, 0.9, 100, 300, 10)  # held
    assert cubic_sparsity(300, 0.9, 100, 300, 10) == 0.9
    assert cubic_sparsity(10_000, 0.9, 100, 300, 10) == 0.9


def test_gmp_method_schedule_reaches_target() -> None:
    gmp = GradualMagnitudePruning(sparsity=0.8, start=0.0, end=0.5, update_interval=10)
    gmp.bind(200)
    assert gmp.sparsity_at(0) == 0.0
    assert gmp.sparsity_at(50) == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert gmp.sparsity_at(100) == 0.8 and gmp.update_due(100)


def test_drop_fraction_update_steps_and_imp_density() -> None:
    schedule = Schedule(start=0.1, end=0.5, interval=10).bind(200)
    assert (schedule.start_step, schedule.end_step) == (20, 100)
    assert [t for t in range(200) if schedule.due(t)] == [20, 30, 40, 50, 60, 70, 80, 90]
    drop = Schedule(end=1.0).bind(100)
    assert drop.cosine(0, 0.3) == pytest.approx(0.3)
    assert drop.cosine(50, 0.3) == pytest.approx(0.15)
    assert drop.cosine(100, 0.3) == 0.0
    assert Schedule(start=0.0, end=1.0, interval=100, shrink=True).bind(10).step_interval == 2
    assert imp_density(3) == pytest.approx(0.512)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
@pytest.mark.parametrize("shape", [(16, 32), (8, 16, 3, 3)])
def test_nm_masks_are_valid(n: int, m: int, shape: tuple[int, ...]) -> None:
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(n * m))
    mask = NM(n, m).mask(scores)
    assert is_nm(mask, n, m)
    assert int(mask.sum()) == scores.numel() * n // m  # exactly n in every group
    if len(shape) == 4:  # groups run along input channels: same (out, kh, kw), channels c..c+m
        group = mask[3, :m, 1, 2]
        assert int(group.sum()) == n
        assert set(torch.topk(scores[3, :m, 1, 2], n).indices.tolist()) == set(
            group.nonzero().view(-1).tolist()
        )


def test_nm_rejects_bad_layers_and_values() -> None:
    with pytest.raises(ConfigError, match="0 < N < M, got 4:4"):
        NM(4, 4)
    with pytest.raises(ConfigError, match="layer 'fc' has 6"):
        NM(2, 4).check("fc", torch.Size([8, 6]))


def test_unstructured_block_channel_exact_counts() -> None:
    scores = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    assert int(Unstructured().mask(scores, 0.25).sum()) == 16
    assert Unstructured().mask(scores, 0.25)[6:].all()  # the largest scores
    block = Block((2, 4)).mask(scores, 0.25)
    assert int(block.sum()) == 16 and block[6:].all() and block[:6].sum() == 0  # two 2x4 tiles
    channel = Channel().mask(scores.reshape(8, 2, 2, 2), 0.5)
    assert channel[4:].all() and not channel[:4].any()


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    ],
)
def test_masked_weights_stay_exactly_zero(make_optimizer) -> None:
    model = toy_model()
    masks = MaskSet({"0": model[0], "2": model[2]})
    masks.set("0", torch.rand(12, 6) > 0.5)
    masks.set("2", torch.rand(12, 12) > 0.7)
    optimizer = make_optimizer(model.parameters())
    for _ in range(5):
        loss = model(torch.randn(16, 6)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        masks.mask_grads()
        optimizer.step()
        masks.apply()
        for name, module in masks:
            assert (module.weight[~masks.mask(name)] == 0).all()
            assert (module.weight[masks.mask(name)] != 0).all()


def test_mask_validation() -> None:
    model = toy_model()
    masks = MaskSet({"0": model[0]})
    with pytest.raises(MaskError, match="layer '0' already has a mask attached"):
        MaskSet({"0": model[0]})
    with pytest.raises(MaskError, match=r"mask for '0' has shape \(6, 12\), the weight \(12, 6\)"):
        masks.set("0", torch.ones(6, 12, dtype=torch.bool))
    assert "0.weight_mask" in model.state_dict()  # saved with every checkpoint


def test_pgf_schedules() -> None:
    from sparsebench.sparsity.methods import ProgressiveGradientFlow

    linear = ProgressiveGradientFlow(pattern="2:4", decay="linear", rate=0.01, start=0.1, end=0.9)
    linear.bind(1000)
    assert linear.phase(50) == (1.0, (2, 4))  # dense phase
    assert linear.phase(150)[0] == pytest.approx(0.5)  # 50 steps after the dense phase
    assert linear.phase(500)[0] == 0.0
    exponential = ProgressiveGradientFlow(decay="exponential", rate=1e-2, end=0.9)
    exponential.bind(1000)
    assert exponential.phase(100)[0] == pytest.approx(torch.e**-1)
    stepwise = ProgressiveGradientFlow(pattern="2:8", decay="stepwise", end=0.9)
    stepwise.bind(900)
    assert stepwise.stages() == [(7, 8), (4, 8), (2, 8)]
    # three equal frames over the 810 steps before end: 270 each
    assert [stepwise.phase(t)[1] for t in (0, 269, 270, 540, 899)] == [
        (7, 8),
        (7, 8),
        (4, 8),
        (2, 8),
        (2, 8),
    ]
    geometric = ProgressiveGradientFlow(pattern="1:4", decay="geometric", end=1.0)
    assert geometric.stages() == [(8, 32), (4, 16), (2, 8), (1, 4)]


def test_iss_p_shrinks_the_smallest_instead_of_zeroing() -> None:
    from sparsebench.sparsity.methods import ISSP

    model = toy_model()
    method = ISSP(sparsity=0.5, alpha=0.9, dense_stem=False, dense_head=False)
    method.bind(10)
    method.attach(model)
    before = {name: m.weight.detach().clone() for name, m in method.masks}
    method.shrink(step=10)  # at the end of the schedule: the smallest 50% of each layer
    for name, module in method.masks:
        w0, w1 = before[name].view(-1), module.weight.detach().view(-1)
        smallest = torch.topk(w0.abs(), w0.numel() // 2, largest=False).indices
        assert torch.allclose(w1[smallest], 0.9 * w0[smallest])
        others = torch.ones_like(w0, dtype=torch.bool)
        others[smallest] = False
        assert torch.equal(w1[others], w0[others]) and (w1 != 0).all()
    method.finalize()
    assert method.masks.sparsity() == pytest.approx(0.5)


def test_imp_levels_rewind_and_reset() -> None:
    from sparsebench.sparsity.methods import IterativeMagnitudePruning
    from sparsebench.training.strategies import prune_and_rewind

    imp = IterativeMagnitudePruning(
        sparsity=0.8, rate=0.2, rewind_step=0, dense_stem=False, dense_head=False
    )
    assert imp.levels == 8  # 0.8^7 = 0.21 > 0.2 >= 0.8^8
    assert [round(imp.density_at(r), 4) for r in (0, 1, 2, 8)] == [1.0, 0.8, 0.64, 0.2]

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = toy_model()

    holder = Holder()
    imp.bind(90)
    imp.attach(holder.model)
    initial = copy.deepcopy(holder.model.state_dict())
    imp.snapshot = copy.deepcopy(holder.model.state_dict())
    optimizer = torch.optim.SGD(holder.model.parameters(), lr=0.1, momentum=0.9)
    holder.model(torch.randn(8, 6)).sum().backward()
    optimizer.step()  # "training": weights move, momentum exists
    trained = {n: m.weight.detach().clone() for n, m in imp.masks}
    prune_and_rewind(imp, holder.model, 1)  # the rounds strategy, between rounds
    assert imp.masks.sparsity() == pytest.approx(0.2, abs=0.01) and imp.level == 1
    for name, module in imp.masks:
        mask = imp.masks.mask(name)
        assert torch.equal(
            module.weight[mask], initial[f"{name}.weight"][mask]
        )  # rewound survivors
        assert (module.weight[~mask] == 0).all()
    # The pruned ones were the smallest trained magnitudes, over all layers at once.
    threshold = max(float(trained[n][~imp.masks.mask(n)].abs().max()) for n, _ in imp.masks)
    assert all(float(trained[n][imp.masks.mask(n)].abs().min()) >= threshold for n, _ in imp.masks)


@pytest.mark.parametrize("model_name", ["resnet20", "resnet18"])
def test_channel_pruning_removes_channels_physically_without_changing_outputs(
    model_name: str,
) -> None:
    import timm

    import sparsebench.models.small  # noqa: F401  (registers resnet20)
    from sparsebench.metrics.flops import flops_per_sample
    from sparsebench.sparsity.methods import ChannelPruning

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10, in_chans=3)
    method = ChannelPruning(sparsity=0.5)
    method.attach(model, torch.randn(2, 3, 32, 32))
    chosen = list(method.masks.layers)
    assert chosen and all(
        name.endswith("conv1") and name != "conv1" for name in chosen
    )  # block-internal
    with torch.no_grad():  # non-trivial norm statistics and affine parameters
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.bias.uniform_(-0.5, 0.5)
    method.prune_by(method.magnitudes())
    method.zero_channels()
    model.eval()
    slim = method.deployed_model(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), slim(x), atol=1e-5)
    for name in chosen:
        assert slim.get_submodule(name).out_channels == model.get_submodule(name).out_channels // 2
    dense = flops_per_sample(model, x[:1])["flops/dense"]
    assert flops_per_sample(slim, x[:1])["flops/dense"] < 0.8 * dense


def test_soup_averages_floats_and_keeps_masks_and_zeros() -> None:
    from sparsebench.training.strategies import average_states, recalibrate_batchnorm

    mask = torch.tensor([True, False, True])
    a = {"w": torch.tensor([1.0, 0.0, 3.0]), "m": mask, "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 0.0, 5.0]), "m": mask.clone(), "n": torch.tensor(7)}
    soup = average_states([a, b])
    assert torch.equal(soup["w"], torch.tensor([2.0, 0.0, 4.0]))  # shared zeros stay exactly zero
    assert torch.equal(soup["m"], mask) and int(soup["n"]) == 5

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    data = [(torch.randn(16, 3) * 2 + 1, None) for _ in range(4)]
    recalibrate_batchnorm(model, data, batches=4)
    with torch.no_grad():
        features = model[0](torch.cat([x for x, _ in data]))
    assert torch.allclose(model[1].running_mean, features.mean(0), atol=1e-5)
    assert model[1].momentum == 0.1  # restored
