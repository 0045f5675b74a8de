"""Post-training pruning: the per-layer algorithms on a small trained model, convolutions
through unfolded inputs, and the prune runner end to end (with its bad-input sentences)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.pruning import algorithms
from sparsebench.pruning.calibrate import collect, layer_inputs, reconstruction_error
from sparsebench.sparsity.patterns import (
    NM,
    Block,
    Pattern,
    Unstructured,
    as_matrix,
    from_matrix,
    is_nm,
)
from tests.fixtures import compose_config, run_cli

# (pattern, density): the training patterns' own types; N:M fixes its density; blocks of 4
# output rows (the group pattern the cpu_sparse kernel runs) and of 4 inputs.
PATTERNS = [
    (Unstructured(), 0.5),
    (Unstructured(), 0.3),
    (NM(2, 4), 0.5),
    (NM(4, 8), 0.5),
    (Block((4, 1)), 0.3),
    (Block((1, 4)), 0.5),
]


def _id(case) -> str:
    return f"{case[0].label}@{case[1]}"


@pytest.fixture(scope="module")
def trained():
    """An MLP trained on scikit-learn's digits, and the statistics of its middle layer."""
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        index = torch.randint(0, len(x), (64,))
        optimizer.zero_grad()
        F.cross_entropy(model(x[index]), y[index]).backward()
        optimizer.step()
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    stats = collect(model, model[2], list(x[:256].split(64)), gram=True)
    return model, stats


def _check_pattern(
    keep: torch.Tensor, case: tuple[Pattern, float], per_row: bool, slack: int = 0
) -> None:
    pattern, density = case
    if isinstance(pattern, NM):
        assert is_nm(keep, pattern.n, pattern.m)
        assert int(keep.sum()) == keep.numel() * pattern.n // pattern.m  # exactly n per group
    elif isinstance(pattern, Block):
        units = pattern.units(keep.float())
        assert ((units == 0) | (units == pattern.granularity(keep.shape))).all()  # whole blocks
        kept = units > 0
        if per_row:  # per row of blocks
            assert (kept.sum(1) == round(density * kept.shape[1])).all()
        else:
            assert abs(int(kept.sum()) - density * kept.numel()) <= 0.5 + slack
    elif per_row:
        assert (keep.sum(1) == round(density * keep.shape[1])).all()
    else:  # per layer (SparseGPT: per block of columns, one rounding each)
        assert abs(int(keep.sum()) - density * keep.numel()) <= 0.5 + slack


@pytest.mark.parametrize("case", PATTERNS, ids=_id)
def test_every_method_meets_its_pattern(trained, case) -> None:
    pattern, density = case
    model, stats = trained
    weight = as_matrix(model[2].weight.detach())
    _check_pattern(algorithms.magnitude(weight, pattern, density), case, per_row=False)
    _check_pattern(algorithms.wanda(weight, stats.norm, pattern, density), case, per_row=True)
    new, keep = algorithms.sparsegpt(weight, stats.gram, pattern, density, block=32)
    _check_pattern(keep, case, per_row=False, slack=weight.shape[1] // 32)
    assert (new[~keep] == 0).all()
    start = algorithms.wanda(weight, stats.norm, pattern, density)
    refined = algorithms.dsnot(weight, start, stats.mean, stats.norm, pattern)
    _check_pattern(refined, case, per_row=True)


@pytest.mark.parametrize("case", [PATTERNS[0], PATTERNS[2]], ids=_id)
def test_sparsegpt_reconstructs_better_than_magnitude(trained, case) -> None:
    pattern, density = case
    model, stats = trained
    weight = as_matrix(model[2].weight.detach())
    new, _ = algorithms.sparsegpt(weight, stats.gram, pattern, density, block=32)
    magnitude = weight * algorithms.magnitude(weight, pattern, density)
    assert reconstruction_error(weight, new, stats.gram) < 0.7 * reconstruction_error(
        weight, magnitude, stats.gram
    )


def test_dsnot_swaps_whole_blocks_and_lowers_the_expected_error(trained) -> None:
    pattern, density = Block((4, 1)), 0.3
    model, stats = trained
    weight = as_matrix(model[2].weight.detach())
    start = algorithms.wanda(weight, stats.norm, pattern, density)
    refined = algorithms.dsnot(weight, start, stats.mean, stats.norm, pattern, threshold=0.0)
    assert not torch.equal(refined, start)  # it swapped blocks
    _check_pattern(refined, (pattern, density), per_row=True)
    # the expected error of each row of blocks (a vector over its 4 rows) shrank where touched
    norm = lambda keep: (((weight * ~keep) * stats.mean).sum(1).reshape(-1, 4) ** 2).sum(1)  # noqa: E731
    touched = (refined != start).reshape(-1, 4, weight.shape[1]).any(2).any(1)
    assert touched.any() and (norm(refined)[touched] < norm(start)[touched]).all()


@pytest.mark.parametrize("case", PATTERNS[:3], ids=_id)
def test_dsnot_lowers_the_reconstruction_error_of_its_start(trained, case) -> None:
    pattern, density = case
    model, stats = trained
    weight = as_matrix(model[2].weight.detach())
    start = algorithms.wanda(weight, stats.norm, pattern, density)
    refined = algorithms.dsnot(weight, start, stats.mean, stats.norm, pattern, threshold=0.0)
    assert not torch.equal(refined, start)  # it swapped weights
    assert torch.equal(refined.sum(1), start.sum(1))  # every row keeps its count
    before = reconstruction_error(weight, weight * start, stats.gram)
    after = reconstruction_error(weight, weight * refined, stats.gram)
    assert after < before
    # the expected (mean-input) error it drives to zero is smaller for every row it touched
    expected = lambda keep: ((weight * ~keep) * stats.mean).sum(1).abs()  # noqa: E731
    touched = (refined != start).any(1)
    assert (expected(refined)[touched] < expected(start)[touched]).all()


def test_convolutions_are_pruned_through_their_unfolded_inputs() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=1, bias=False)
    x = torch.randn(2, 8, 9, 9)
    rows = layer_inputs(conv, x)  # samples x (kh * kw * in)
    out = conv(x).permute(0, 2, 3, 1).reshape(-1, 6)
    weight = as_matrix(conv.weight.detach())  # the one layout of patterns and unfolded inputs
    assert torch.allclose(rows @ weight.T, out, atol=1e-5)
    keep = algorithms.wanda(weight, rows.norm(dim=0), NM(2, 4), 0.5)
    mask = from_matrix(keep, conv.weight.shape)
    assert torch.equal(mask, NM(2, 4).mask(mask.float()))  # the training pattern's own groups
    assert mask.shape == conv.weight.shape and is_nm(mask, 2, 4)  # groups along input channels


def _results(folder: Path) -> dict:
    (path,) = [p for p in folder.glob("outputs/runs/*/*/results.json")]
    return json.loads(path.read_text())


FAST = [
    "debug=fast",
    "hardware.threads=1",
    "logger=none",
    "model=mlp",
    "model.hidden_dims=[64,64]",
    "trainer.limit_train_batches=10",
    "method.calibration_samples=64",
]


@pytest.mark.slow
def test_prune_runner_trains_dense_first_then_prunes(tmp_path: Path) -> None:
    proc = run_cli(["runner=prune", "+method=wanda", *FAST], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no checkpoint given: training the dense model first" in proc.stdout + proc.stderr
    data = _results(tmp_path)
    metrics = data["metrics"]
    for key in ("test/acc", "test/acc_dense", "time/prune_s", "memory/peak_mb", "flops/sparse"):
        assert key in metrics
    assert metrics["sparsity/actual"] == pytest.approx(0.5, abs=0.01)
    assert metrics["test/acc_dense"] > 0.5 and metrics["memory/peak_mb"] > 10
    assert data["status"] == "ok" and data["tags"]["method"] == "wanda"
    (layer,) = data["layers"].values()  # the one layer between stem and head
    assert layer["wanda"] <= layer["magnitude"] * 1.5  # errors recorded per layer
    dense_run = Path(data["checkpoint"]).parent.parent
    (tmp_path / "again").mkdir()
    # Prune the same checkpoint with SparseGPT at 2:4, fine-tuning one epoch with masks fixed
    # (in-process: the CLI path is the one above).
    from sparsebench.runners.prune import run

    run(
        compose_config(
            [
                "runner=prune",
                "+method=sparsegpt",
                "method.pattern=2:4",
                "method.finetune_epochs=1",
                f"checkpoint={dense_run}",
                *FAST,
            ],
            output_dir=tmp_path / "again" / "outputs" / "runs" / "x" / "y",
        )
    )
    again = _results(tmp_path / "again")["metrics"]
    assert again["sparsity/actual"] == pytest.approx(0.5, abs=0.01)
    assert again["test/acc_dense"] == pytest.approx(metrics["test/acc_dense"])  # same weights
    dense = json.loads((dense_run / "results.json").read_text())["metrics"]
    assert metrics["train/samples"] == dense["train/samples"] > 0  # the dense training counts
    assert again["train/samples"] > metrics["train/samples"]  # plus the fine-tuning epoch


@pytest.mark.parametrize("pattern", ["2:4", "block4x1"])
def test_prune_runner_on_convolutions(make_cfg, tmp_path: Path, pattern: str) -> None:
    from sparsebench.runners.prune import run

    metrics = run(
        make_cfg(
            "runner=prune",
            "+method=dsnot",
            f"method.pattern={pattern}",
            "model=resnet20",
            "model.width=8",
            "logger=none",
            "method.calibration_samples=32",
        )
    ).metrics
    assert metrics["sparsity/actual"] == pytest.approx(0.5, abs=0.01)
    assert metrics["flops/sparse"] < 0.6 * metrics["flops/dense"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["+method=rigl"],
            "runner 'prune' needs a post-training method (+method=dsnot, oneshot_magnitude, sparsegpt or wanda); got 'rigl'.",
        ),
        (
            ["+method=wanda", "method.calibration_samples=100000"],
            "method.calibration_samples=100000 is more than the ",
        ),
        (
            ["+method=wanda", "method.pattern=2:4", "model.hidden_dims=[66,66]"],
            "N:M pattern 2:4 needs every pruned layer's input dimension divisible by 4; layer 'features.4' has 66",
        ),
        (
            ["+method=sparsegpt", "checkpoint=nowhere.ckpt"],
            "checkpoint nowhere.ckpt does not exist",
        ),
    ],
)
def test_prune_runner_bad_input_is_one_sentence(make_cfg, tmp_path: Path, args, message) -> None:
    # Checked before any training (the CLI path of these errors: the next test).
    from sparsebench.runners.prune import run

    with pytest.raises(ConfigError) as info:
        run(make_cfg("runner=prune", "model=mlp", "logger=none", *args))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not list(tmp_path.glob("**/*.ckpt")) and not list(tmp_path.glob("**/results.json"))


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
        tmp_path / "x.ckpt",
    )
    proc = run_cli(
        [
            "runner=prune",
            "+method=wanda",
            "model=mlp",
            "debug=fast",
            "logger=none",
            f"checkpoint={tmp_path / 'x.ckpt'}",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "does not match model 'mlp' of this config (missing features." in line
    assert line.endswith("; unexpected bias, weight).")


def test_sparsegpt_prunes_dead_inputs_first_without_overshooting() -> None:
    # Inputs that are always zero (padded taps of a conv on tiny maps) cost nothing to prune.
    torch.manual_seed(0)
    weight = torch.randn(16, 64)
    x = torch.randn(512, 64)
    x[:, :16] = 0.0  # a quarter of the inputs are dead
    new, keep = algorithms.sparsegpt(weight, x.T @ x, Unstructured(), 0.5, block=64)
    assert int(keep.sum()) == 16 * 32 and int((new != 0).sum()) == int(keep.sum())  # exactly 50%
    assert not keep[:, :16].any()  # the dead quarter went first


class _WritesAFile:
    """A pickle payload: unpickling it calls open(path, "w"), i.e. runs code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_or_broken_checkpoints_are_refused_and_never_run(tmp_path: Path) -> None:
    from sparsebench.runners import prune

    marker = tmp_path / "written-by-the-checkpoint"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _WritesAFile(str(marker))}, evil)
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": nn.Linear(64, 64).state_dict()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    base = ["runner=prune", "+method=wanda", "model=mlp", "debug=fast", "logger=none"]
    with pytest.raises(ConfigError) as crafted:
        prune.run(compose_config([*base, f"checkpoint={evil}"], tmp_path / "a"))
    assert str(crafted.value).startswith(f"checkpoint {evil} holds an object")
    assert "refuses it" in str(crafted.value) and not marker.exists()
    with pytest.raises(ConfigError, match=f"checkpoint {truncated} cannot be read .*truncated"):
        prune.run(compose_config([*base, f"checkpoint={truncated}"], tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing recorded
