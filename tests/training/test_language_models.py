"""Causal language models end to end through the command line, on a checkpoint as
save_pretrained writes it (config.json, safetensors, tokenizer files): RigL fine-tunes it and
Wanda prunes its own weights, both recorded with the language-modelling contract and admitted by
the leaderboard; a window longer than the model's positions is one sentence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sparsebench.leaderboard.read import read_runs
from sparsebench.leaderboard.rows import admit
from sparsebench.record.contract import contract_metrics
from tests.fixtures import run_cli

pytestmark = pytest.mark.slow


def _checkpoint(folder: Path) -> None:
    """A tiny LLaMA and a BPE of 400 tokens, written by save_pretrained."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from sparsebench.data.text import EOS, ShakespeareDataModule
    from sparsebench.models.language import tiny_llama

    texts = [t for _, t in ShakespeareDataModule("shakespeare").documents()[:3]]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, special_tokens=[EOS], show_progress=False)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS).save_pretrained(folder)
    torch.manual_seed(0)
    model = tiny_llama(
        vocab_size=400, max_positions=64, hidden_size=32, num_heads=2, intermediate_size=64
    )
    model.lm.save_pretrained(folder)


def _results(folder: Path) -> dict:
    (path,) = folder.glob("outputs/**/results.json")
    return json.loads(path.read_text())


def test_a_save_pretrained_checkpoint_trains_sparse_prunes_and_ranks(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    _checkpoint(folder)
    for name in ("train", "prune", "bad"):
        (tmp_path / name).mkdir()
    store = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        "model=hf_causal_lm",
        f"model.name_or_path={folder}",
        "dataset=shakespeare",
        "dataset.seqlen=64",
        "dataset.max_tokens=8192",
        "hardware.threads=1",
        "hardware.min_run_time=0.05",
        "hardware.max_run_time=0.2",
        f"logger.tracking_uri={store}",
    ]
    args = ["+method=rigl", "method.sparsity=0.5", "method.update_interval=2", "debug=fast"]
    args.append("trainer.precision=bf16-mixed")  # autocast (natively where the CPU has it)
    trained = run_cli([*common, *args], cwd=tmp_path / "train")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "test perplexity" in trained.stdout and "FLOPs/token dense" in trained.stdout
    data = _results(tmp_path / "train")
    metrics = data["metrics"]
    assert data["status"] == "ok" and data["tags"]["task"] == "language_modeling"
    assert set(contract_metrics("language_modeling")) <= set(metrics)
    assert "test/acc" not in metrics
    assert math.isfinite(metrics["test/ppl"]) and metrics["test/ppl"] > 1
    assert metrics["test/ppl"] == pytest.approx(math.exp(metrics["test/loss"]), rel=1e-4)
    assert metrics["sparsity/actual"] == pytest.approx(0.5, abs=1e-3)
    assert metrics["train/samples"] == 3 * 16 * 64  # tokens: 3 batches of 16 windows
    assert metrics["throughput/tokens_per_s"] > 0
    assert 0 < metrics["time/step_ms"] < 1e3 * metrics["time/train_s"]  # the median step
    # per token: the prefill window's latency over its tokens, and a decode step (KV cache)
    assert metrics["latency/prefill_token_ms"] == pytest.approx(metrics["latency/p50_ms"] / 64)
    assert metrics["latency/decode_token_ms"] > 0 and metrics["speedup/decode_measured"] == 1
    assert set(data["kernels_decode"]) == set(data["kernels"]) and len(data["kernels"]) == 28
    # The model's own tokenizer (dataset.tokenizer follows model.name_or_path): no BPE trained.
    assert not list((tmp_path / "train").glob("outputs/**/tokenizer/tokenizer.json"))

    prune = ["runner=prune", "+method=wanda", "method.pattern=2:4", "method.calibration_samples=8"]
    pruned = run_cli([*common, *prune, "trainer.limit_test_batches=4"], cwd=tmp_path / "prune")
    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert "training the dense model first" not in pruned.stderr
    data = _results(tmp_path / "prune")
    metrics = data["metrics"]
    assert data["status"] == "ok" and metrics["sparsity/actual"] == pytest.approx(0.5, abs=1e-3)
    assert (
        metrics["train/samples"] == 0 and metrics["test/ppl"] > 1 and metrics["test/ppl_dense"] > 1
    )
    assert data["checkpoint"] == str(folder)
    logged = MlflowClient(tracking_uri=store).get_run(data["mlflow"]["run_id"]).data.metrics
    assert logged["test/ppl_dense"] == pytest.approx(metrics["test/ppl_dense"])
    assert logged["test/ppl"] == pytest.approx(metrics["test/ppl"])
    admitted, left = admit(read_runs(store))
    assert len(admitted) == 2 and not left  # each its own contract, complete

    seqlen = run_cli([*common, "dataset.seqlen=128"], cwd=tmp_path / "bad")
    assert seqlen.returncode == 2 and not list((tmp_path / "bad").glob("outputs/**/results.json"))
    assert seqlen.stderr.strip().splitlines()[-1] == (
        "error: dataset.seqlen=128 is more than the 64 positions of model 'llama'; "
        "use dataset.seqlen <= 64."
    )
