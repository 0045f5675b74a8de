"""A causal language model end to end through the command line: the tiny LLaMA on Shakespeare
with RigL, recorded with the language-modelling contract and admitted by the leaderboard."""

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


def test_a_tiny_llama_trains_sparse_on_shakespeare_and_ranks(tmp_path: Path) -> None:
    args = [
        "model=tiny_llama",
        "dataset=shakespeare",
        "+method=rigl",
        "method.sparsity=0.5",
        "method.update_interval=2",
        "debug=fast",
        "dataset.max_tokens=8192",
        "hardware.threads=1",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test perplexity" in proc.stdout and "FLOPs/token dense" in proc.stdout
    (path,) = tmp_path.glob("outputs/**/results.json")
    data = json.loads(path.read_text())
    metrics = data["metrics"]
    assert data["status"] == "ok" and data["tags"]["task"] == "language_modeling"
    assert set(contract_metrics("language_modeling")) <= set(metrics)
    assert "test/acc" not in metrics
    assert math.isfinite(metrics["test/ppl"]) and metrics["test/ppl"] > 1
    assert metrics["test/ppl"] == pytest.approx(math.exp(metrics["test/loss"]), rel=1e-4)
    assert metrics["sparsity/actual"] == pytest.approx(0.5, abs=1e-3)
    assert metrics["train/samples"] == 3 * 16 * 128  # tokens: 3 batches of 16 windows
    assert metrics["throughput/tokens_per_s"] > 0
    assert (path.parent / "tokenizer" / "tokenizer.json").is_file()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logged = MlflowClient(tracking_uri=uri).get_run(data["mlflow"]["run_id"]).data.metrics
    assert logged["test/ppl"] == pytest.approx(metrics["test/ppl"])
    admitted, left = admit(read_runs(uri))
    assert len(admitted) == 1 and not left  # its own contract is complete
