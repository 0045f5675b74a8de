"""Hardware targets and storage sizes: hand-computed sizes, sparse kernels equal to dense,
pattern checks before training, roofline estimates. CUDA tests need a GPU and skip without."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.hardware import (
    CPUSparseTarget,
    CPUTarget,
    CUDA2to4Target,
    CUDATarget,
    RooflineTarget,
)
from sparsebench.hardware.cpu import SparseLinear, sparse_candidates
from sparsebench.hardware.deploy import fold_batchnorm
from sparsebench.hardware.direct import DirectSparse
from sparsebench.hardware.timing import Timing, judge, time_interleaved, timing_cpus
from sparsebench.metrics.size import layer_bytes, model_bytes
from sparsebench.sparsity.patterns import NM, Block, Unstructured
from tests.fixtures import compose_config, run_cli

NO_GPU = "needs a CUDA GPU; torch.cuda.is_available() is False on this machine"


def test_storage_bytes_hand_computed() -> None:
    w = torch.zeros(4, 8)
    w[0, :2] = 1.0
    w[3, 4:8] = 2.0  # 6 nonzeros; one full 1x4 block and one half block
    assert layer_bytes(w, "dense", 4) == 32 * 4
    assert layer_bytes(w, "csr", 4) == 6 * (4 + 4) + 5 * 4
    assert layer_bytes(w, "bitmap", 2) == 6 * 2 + 4
    assert layer_bytes(w, "bcsr", 4, block=(1, 4)) == 2 * (4 * 4 + 4) + 5 * 4
    nm = NM(2, 4).mask(torch.rand(4, 8)).float()
    assert layer_bytes(nm, "nm", 2, m=4) == 16 * 2 + 16 * 2 // 8  # 2-bit index per kept value
    with pytest.raises(ConfigError, match="does not tile a 4x8 weight"):
        layer_bytes(w, "bcsr", 4, block=(3, 4))


def test_model_bytes_keep_unpruned_layers_dense() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.zero_()
    got = model_bytes(model, {"0": model[0]}, "csr", "fp16")
    total = sum(p.numel() for p in model.parameters())
    assert got["size/dense_bytes"] == total * 2
    assert got["size/sparse_bytes"] == (total - 32) * 2 + 5 * 4  # empty CSR: row pointers only


def _sparse(layer: nn.Module, sparsity: float) -> nn.Module:
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < sparsity] = 0
    return layer


def test_sparse_linear_and_1x1_conv_match_dense() -> None:
    torch.manual_seed(0)
    linear = _sparse(nn.Linear(64, 32), 0.8)
    x = torch.randn(5, 7, 64)
    for weight in (
        linear.weight.detach().to_sparse_csr(),
        linear.weight.detach().to_sparse_bsr((16, 16)),
    ):
        sparse = SparseLinear(weight, linear.bias)
        assert torch.allclose(sparse(x), linear(x), atol=1e-5)
        assert torch.allclose(SparseLinear(weight, None)(x), linear(x) - linear.bias, atol=1e-5)
        # 32-bit indices, as MKL takes them (64-bit ones are converted on every call)
        assert (
            sparse.weight.col_indices().dtype == sparse.weight.crow_indices().dtype == torch.int32
        )
    conv = _sparse(nn.Conv2d(16, 32, 1, stride=2), 0.8)
    image = torch.randn(2, 16, 9, 9)
    sparse = SparseLinear(
        conv.weight.detach().reshape(32, 16).to_sparse_csr(), conv.bias, conv_stride=2
    )
    assert torch.allclose(sparse(image), conv(image), atol=1e-5)
    assert torch.allclose(sparse(image[:1]), conv(image[:1]), atol=1e-5)  # batch 1: NCHW as is
    plain = SparseLinear(conv.weight.detach().reshape(32, 16).to_sparse_csr(), None, conv_stride=2)
    assert torch.allclose(plain(image[:1]), conv(image[:1]) - conv.bias[:, None, None], atol=1e-5)


def test_cpu_sparse_converts_checks_and_reports_kernels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 512),
        nn.ReLU(),
        _sparse(nn.Linear(512, 512), 0.95),
        nn.ReLU(),
        _sparse(nn.Linear(512, 512), 0.1),
        nn.Linear(512, 4),
    )
    target = CPUSparseTarget(
        name="cpu_sparse", threads=1, batch_size=16, min_run_time=0.05, warmup=1
    )
    layers = {"2": model[2], "4": model[4]}
    measured = target.benchmark(model, torch.randn(1, 32), layers)
    metrics = measured.metrics
    assert measured.kernels["4"] == "dense (sparsity 0.10 < hardware.min_sparsity 0.3)"
    assert measured.kernels["2"] in {"dense", "csr", "bsr4x4", "bsr16x16", "direct", "direct4x1"}
    assert metrics["latency/p50_ms"] <= metrics["latency/p90_ms"]
    assert (
        metrics["latency/p50_low_ms"] <= metrics["latency/p50_ms"] <= metrics["latency/p50_high_ms"]
    )
    assert measured.tags["latency/noisy"] in {"true", "false"}
    assert metrics["speedup/measured"] == pytest.approx(
        metrics["latency/dense_p50_ms"] / metrics["latency/p50_ms"]
    )
    converted, _ = target.convert(model, layers, torch.randn(16, 32))
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.allclose(converted(x), model(x), atol=1e-5)


# (in, out, kernel, stride, padding, dilation, groups, bias, input h x w): strides 1-3,
# symmetric and asymmetric padding, dilation, rectangular kernels, grouped and depthwise.
CONVS = [
    (8, 12, 3, 1, 1, 1, 1, True, (9, 9)),
    (8, 12, 3, 2, 1, 1, 1, False, (9, 8)),
    (8, 12, 3, 3, 2, 1, 1, True, (11, 10)),
    (8, 12, 3, 1, 2, 2, 1, True, (9, 9)),
    (8, 12, (1, 3), (2, 1), (0, 2), (1, 2), 1, False, (7, 9)),
    (8, 16, 5, 2, (2, 1), 1, 1, True, (12, 9)),
    (8, 12, 1, 1, 0, 1, 1, True, (7, 7)),
    (8, 12, 1, 2, 0, 1, 1, False, (9, 9)),
    (8, 16, 3, 1, 1, 1, 2, True, (8, 8)),
    (8, 8, 3, 2, 1, 1, 8, True, (9, 9)),
    (8, 8, 3, 1, 1, 1, 8, False, (7, 9)),
    (8, 8, 5, 1, 4, 2, 8, True, (9, 8)),
]


@pytest.mark.parametrize("case", CONVS, ids=lambda c: f"k{c[2]}s{c[3]}p{c[4]}d{c[5]}g{c[6]}")
def test_direct_kernel_matches_dense_convolution(case) -> None:
    cin, cout, k, stride, padding, dilation, groups, bias, size = case
    torch.manual_seed(0)
    conv = _sparse(nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias), 0.7)
    for rows in (1, 4):
        if rows == 4 and (cout // groups) % 4:  # depthwise: 4 output channels share no input
            assert "direct4x1" not in sparse_candidates(conv, ["direct"], [])
            continue
        direct = DirectSparse(conv, rows)
        for batch in (1, 3):
            for x in (
                torch.randn(batch, cin, *size),
                torch.randn(batch, cin, *size).to(memory_format=torch.channels_last),
            ):
                with torch.no_grad():
                    expected, got = conv(x), direct(x)  # the second call reuses the input buffer
                assert got.shape == expected.shape and got.is_contiguous()
                assert torch.allclose(got, expected, atol=1e-5), (rows, batch)


def test_direct_kernel_matches_dense_linear_and_reports_what_it_refuses() -> None:
    torch.manual_seed(0)
    linear = _sparse(nn.Linear(40, 30), 0.8)
    x = torch.randn(5, 3, 40)
    for rows in (1, 4):
        assert torch.allclose(DirectSparse(linear, rows)(x), linear(x), atol=1e-5)
    reflect = _sparse(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), 0.9)
    model = nn.Sequential(_sparse(nn.Conv2d(3, 8, 3, padding=1), 0.9), nn.ReLU(), reflect)
    target = CPUSparseTarget(
        name="cpu_sparse",
        threads=1,
        min_run_time=0.02,
        max_run_time=0.2,
        warmup=1,
        kernels=["direct"],
    )
    _, kernels = target.convert(model, {"0": model[0], "2": reflect}, torch.randn(1, 3, 10, 10))
    assert kernels["2"] == "dense (padding_mode 'reflect': the direct kernel pads with zeros)"
    assert kernels["0"] in {"dense", "direct", "direct4x1"}


def test_batchnorm_folding_keeps_outputs_and_zeros() -> None:
    torch.manual_seed(0)
    shared = nn.Conv2d(8, 8, 3, padding=1)  # called twice: never folded
    model = nn.Sequential(
        _sparse(nn.Conv2d(3, 8, 3, padding=1), 0.9),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        shared,
        nn.BatchNorm2d(8),
        shared,
    )
    for bn in (model[1], model[4]):
        (
            bn.running_mean.uniform_(-1, 1),
            bn.running_var.uniform_(0.5, 2),
            bn.weight.data.uniform_(0.5, 2),
        )
    x = torch.randn(2, 3, 10, 10)
    folded, count = fold_batchnorm(model.eval(), x)
    assert (
        count == 1 and isinstance(folded[1], nn.Identity) and isinstance(folded[4], nn.BatchNorm2d)
    )
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert torch.equal(folded[0].weight == 0, model[0].weight == 0)  # the pattern is kept


def test_interleaved_timing_states_its_interval_and_noise() -> None:
    timings, noise = time_interleaved(
        {"a": lambda: torch.ones(64).sum(), "b": lambda: None},
        threads=1,
        warmup=1,
        min_run_time=0.05,
        max_run_time=0.3,
    )
    for t in timings.values():
        assert t.low <= t.p50 <= t.high and t.p50 <= t.p90 and t.blocks >= 10
    assert noise.cores == len(timing_cpus()) and noise.load_avg >= 0
    wide = Timing(p50=1.0, p90=1.5, low=0.8, high=1.3, blocks=10)
    narrow = Timing(p50=1.0, p90=1.02, low=0.98, high=1.03, blocks=40)
    assert judge({"dense": narrow}, competing=0.0, threads=2, cores=2).reasons == []
    assert (
        "the p50 of sparse is known only to +-30%" in judge({"sparse": wide}, 0.0, 2, 2).reasons[0]
    )
    assert judge({"dense": narrow}, competing=1.0, threads=2, cores=2).reasons == [
        "other work used 1.0 cores beside 2 timing threads on 2 cores"
    ]
    assert judge({"dense": narrow}, competing=1.0, threads=1, cores=2).reasons == []  # a free core


def test_a_busy_thread_beside_the_timing_is_tagged_noisy() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    target = CPUTarget(
        name="cpu",
        threads=len(timing_cpus()),
        batch_size=8,
        min_run_time=0.3,
        max_run_time=1.0,
        warmup=1,
    )
    busy = threading.Thread(target=spin, daemon=True)
    busy.start()
    try:
        measured = target.benchmark(model, torch.randn(1, 256))
    finally:
        stop.set()
        busy.join()
    assert measured.tags["latency/noisy"] == "true", measured.metrics
    assert "other work used" in measured.tags["latency/noise"]
    assert measured.metrics["host/load"] > 0.5


def test_unsupported_pattern_fails_before_training_unless_fallback() -> None:
    target = CUDA2to4Target(name="cuda_2to4")
    with pytest.raises(ConfigError) as err:
        target.check(Unstructured(), "rigl")
    assert str(err.value) == (
        "hardware 'cuda_2to4' runs only 2:4 sparsity, but method 'rigl' produces unstructured; choose "
        "another target or set hardware.dense_fallback=true to time it with dense kernels."
    )
    with pytest.raises(ConfigError, match="produces block1x4"):
        target.check(Block((1, 4)), "gmp")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="hardware 'cuda_2to4' needs a CUDA GPU"):
            target.check(NM(2, 4), "nm")
    CPUTarget(name="cpu").check(Unstructured(), "rigl")  # dense targets run everything


def test_cli_rejects_pattern_before_training(tmp_path) -> None:
    from tests.fixtures import run_cli

    proc = run_cli(["+method=rigl", "hardware=cuda_2to4", "model=mlp"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert (
        "error: hardware 'cuda_2to4' runs only 2:4 sparsity, but method 'rigl' produces unstructured"
        in proc.stderr
    )
    assert not list(tmp_path.glob("outputs/**/results.json"))


def _two_four_model() -> tuple[nn.Module, dict[str, nn.Module]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8)
    )
    with torch.no_grad():
        model[2].weight.mul_(NM(2, 4).mask(model[2].weight.abs()))
    return model, {"2": model[2]}


def test_roofline_estimates_are_labelled_and_sensible() -> None:
    cfg = compose_config(["hardware=a100"])
    from sparsebench.training.parts import build_hardware

    target = build_hardware(cfg)
    assert (
        isinstance(target, RooflineTarget) and target.fingerprint()["latency/estimated"] == "true"
    )
    model, layers = _two_four_model()
    target.check(NM(2, 4), "nm")
    nm = target.benchmark(model, torch.randn(1, 64), layers, NM(2, 4))
    assert 1.0 < nm.metrics["speedup/measured"] <= 2.0
    assert nm.kernels == {"2": "2:4 (estimated)"}
    assert target.size(model, layers, NM(2, 4)) != target.size(model, layers, Unstructured())
    target.check(Unstructured(), "rigl")
    unstructured = target.benchmark(model, torch.randn(1, 64), layers, Unstructured())
    assert unstructured.metrics["speedup/measured"] == pytest.approx(1.0)  # no such kernels


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_cuda_dense_timing() -> None:
    model, _ = _two_four_model()
    metrics = (
        CUDATarget(name="cuda", batch_size=64, min_run_time=0.1)
        .benchmark(model, torch.randn(1, 64))
        .metrics
    )
    assert 0 < metrics["latency/p50_ms"] <= metrics["latency/p90_ms"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_cuda_2to4_kernels_match_dense() -> None:
    model, layers = _two_four_model()
    target = CUDA2to4Target(name="cuda_2to4", batch_size=64, min_run_time=0.1)
    target.check(NM(2, 4), "nm")
    measured = target.benchmark(model, torch.randn(1, 64), layers, NM(2, 4))
    assert measured.kernels == {"2": "2:4"} and measured.metrics["speedup/measured"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_cuda_2to4_shape_the_kernels_refuse_stays_dense() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 8))  # 24x40: no 2:4 kernel
    with torch.no_grad():
        model[0].weight.mul_(NM(2, 4).mask(model[0].weight.abs()))
    target = CUDA2to4Target(name="cuda_2to4", batch_size=16, min_run_time=0.05)
    measured = target.benchmark(model, torch.randn(1, 40), {"0": model[0]}, NM(2, 4))
    assert measured.kernels["0"].startswith("dense (")
    assert measured.metrics["kernels/sparse_layers"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_cuda_2to4_end_to_end(tmp_path: Path) -> None:
    # Train 2:4 on the CPU, then time it on the GPU's sparse tensor cores against dense fp16.
    args = [
        "+method=nm",
        "model=mlp",
        "model.hidden_dims=[1024,1024]",
        "hardware=cuda_2to4",
        "debug=fast",
        "logger=none",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = sorted(tmp_path.glob("outputs/**/results.json"))
    data = json.loads(results.read_text())
    assert "2:4" in data["kernels"].values(), data["kernels"]
    metrics = data["metrics"]
    assert metrics["speedup/measured"] == pytest.approx(
        metrics["latency/dense_p50_ms"] / metrics["latency/p50_ms"]
    )
    assert metrics["sparsity/actual"] == pytest.approx(0.5, abs=0.01)
    assert data["tags"]["latency/estimated"] == "false"
    assert data["tags"]["hw/gpu"] == torch.cuda.get_device_name()
