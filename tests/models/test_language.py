"""Causal language models: the tiny LLaMA built from its config, any save_pretrained folder
loaded by AutoModelForCausalLM (safetensors only), their prunable layers, and perplexity as the
pruning papers compute it."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from sparsebench.errors import ConfigError
from sparsebench.models import build_model
from sparsebench.models.language import hf_causal_lm, tiny_llama
from sparsebench.sparsity.prunable import prunable_layers
from tests.fixtures import compose_config


def _small(max_positions: int = 32, num_layers: int = 2):
    return tiny_llama(
        vocab_size=300,
        max_positions=max_positions,
        hidden_size=32,
        num_layers=num_layers,
        num_heads=2,
        intermediate_size=64,
    )


def test_every_decoder_linear_is_prunable_and_embeddings_and_head_stay_dense() -> None:
    model = _small()
    layers = prunable_layers(model)
    assert len(layers) == 2 * 7  # q, k, v, o and gate, up, down per block
    assert all(".layers." in name for name in layers)
    assert "lm.lm_head" not in layers and "lm.lm_head" in prunable_layers(model, dense_head=False)


def test_a_save_pretrained_folder_loads_as_hf_causal_lm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _small()
    model.lm.save_pretrained(tmp_path / "lm")  # config.json + model.safetensors
    assert (tmp_path / "lm" / "model.safetensors").is_file()
    cfg = compose_config(
        ["model=hf_causal_lm", f"model.name_or_path={tmp_path / 'lm'}", "dataset=shakespeare"],
        output_dir=tmp_path,
    )
    loaded = build_model(cfg.model)
    ids = torch.randint(0, 300, (2, 16))
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(ids), loaded(ids), atol=1e-5)
    with pytest.raises(ConfigError, match=r"^model.name_or_path=.*: no causal language model"):
        hf_causal_lm(str(tmp_path / "missing" / "folder"))


def test_perplexity_is_exp_of_the_mean_token_nll_over_the_test_windows(tmp_path: Path) -> None:
    from sparsebench.data.text import TextFilesDataModule
    from sparsebench.training.module import LanguageModelingModule

    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.txt").write_text(" ".join(f"w{(i * 7 + j) % 50}" for j in range(400)))
    data = TextFilesDataModule(
        "text",
        seqlen=16,
        vocab_size=300,
        data_dir=str(folder),
        eval_batch_size=3,
        val_fraction=0.2,
        test_fraction=0.3,
    )
    data.setup("test")
    torch.manual_seed(0)
    model = _small(max_positions=16, num_layers=1)
    module = LanguageModelingModule(model, optimizer=torch.optim.SGD)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    (metrics,) = trainer.test(module, datamodule=data, verbose=False)
    nll, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for (window,) in data.test_set:  # one window at a time, by hand
            logits = model(window[None])[0]
            nll += float(F.cross_entropy(logits[:-1], window[1:], reduction="sum"))
            count += len(window) - 1
    assert metrics["test/loss"] == pytest.approx(nll / count, rel=1e-5)
    assert metrics["test/ppl"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_a_decode_step_is_the_last_token_given_the_cache_and_the_sparse_kernels_time_it() -> None:
    import copy

    from sparsebench.hardware.cpu import CPUSparseTarget
    from sparsebench.models.language import DecodeStep

    torch.manual_seed(0)
    model = _small(num_layers=1).eval()
    layers = prunable_layers(model)
    with torch.no_grad():
        for layer in layers.values():
            layer.weight[torch.rand_like(layer.weight) < 0.8] = 0
    window = torch.randint(0, 300, (1, 32))
    step = DecodeStep(model)
    with torch.inference_mode():
        last = model(window)[:, -1:]
        first, again = step(window), step(window)
        # the cache holds the window before its last token, before and after every step
        assert step.slot.cache.get_seq_length() == 31
        assert torch.allclose(first, last, atol=1e-5) and torch.equal(first, again)
        assert copy.deepcopy(step).slot.cache is None  # a copy fills its own from its weights
    target = CPUSparseTarget(
        name="cpu_sparse", threads=1, kernels=["csr"], min_run_time=0.05, max_run_time=0.1
    )
    measured = target.benchmark(DecodeStep(model), window, layers)
    assert set(measured.kernels) == set(layers)  # the decoder's own layer names
    assert measured.metrics["latency/p50_ms"] > 0 and measured.metrics["latency/dense_p50_ms"] > 0
