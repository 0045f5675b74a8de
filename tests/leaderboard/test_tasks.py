"""A language-model benchmark key on the leaderboard: ranked by test perplexity, lowest first,
with the quality column named by its metric (hand-made runs)."""

from __future__ import annotations

from sparsebench.leaderboard.rows import admit, aggregate


def _lm_run(run_hash: str, ppl: float, flops: float) -> dict:
    """A complete ok language-model run (its own contract: perplexity, no accuracy)."""
    from sparsebench.record.contract import contract_metrics

    metrics = {**dict.fromkeys(contract_metrics("language_modeling"), 1.0), "test/ppl": ppl}
    metrics["flops/sparse"] = flops
    tags = {
        "benchmark_key": "shakespeare|tiny_llama|cpu|e2",
        "run_hash": run_hash,
        "method": run_hash,
        "seed": "0",
        "task": "language_modeling",
        "pattern": "2:4",
    }
    return {"metrics": metrics, "tags": tags}


def test_a_language_model_key_ranks_by_perplexity_lowest_first(tmp_path) -> None:
    from sparsebench.leaderboard.render import html_table, markdown

    runs = [
        _lm_run("magnitude", 400.0, 50),
        _lm_run("sparsegpt", 90.0, 50),
        _lm_run("dense", 60.0, 100),
    ]
    admitted, left = admit(runs)
    assert len(admitted) == 3 and not left
    rows = aggregate(admitted)
    assert [(r.method, r.rank, r.metric) for r in rows] == [
        ("dense", 1, "test/ppl"),
        ("sparsegpt", 2, "test/ppl"),
        ("magnitude", 3, "test/ppl"),
    ]
    # The front: lower perplexity is better; magnitude is dominated by sparsegpt at equal FLOPs.
    assert {r.method for r in rows if r.flops_front} == {"dense", "sparsegpt"}
    assert " test ppl " in markdown(rows) and "test acc" not in markdown(rows)
    assert "<th>test ppl</th>" in "".join(html_table(rows))
