"""Post-training pruning of causal language models: sequential calibration block by block, as
the SparseGPT and Wanda reference implementations do, checked against an explicit computation
that runs the whole model once per block."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsebench.models.language import tiny_gpt2, tiny_llama
from sparsebench.pruning.calibrate import LayerStats, layer_inputs
from sparsebench.pruning.methods import SparseGPT, Wanda
from sparsebench.sparsity.patterns import as_matrix, from_matrix

VOCAB, SEQLEN = 300, 24


def _model(family=tiny_llama):
    torch.manual_seed(0)
    model = family(
        vocab_size=VOCAB,
        max_positions=SEQLEN,
        hidden_size=32,
        num_layers=3,
        num_heads=2,
        intermediate_size=64,
    )
    for p in model.parameters():  # heavier-tailed weights than the initialisation's: masks move
        p.data += 0.05 * torch.randn_like(p).pow(3)
    return model.eval()


def _batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return list(torch.randint(0, VOCAB, (8, SEQLEN), generator=gen).split(4))


@torch.no_grad()
def _explicit(model: nn.Module, method, batches, sequential: bool) -> None:
    """The reference computation: for each block, the whole (partly pruned) model runs on the
    calibration batches with hooks on that block's layers, then those layers are pruned. With
    ``sequential=False`` every block's statistics come from the dense model instead."""
    method.attach(model)
    layers = dict(method.masks)
    dense = copy.deepcopy(model)
    for block, dense_block in zip(model.blocks(), dense.blocks(), strict=True):
        inside = [(n, m) for n, m in layers.items() if any(m is x for x in block.modules())]
        source = model if sequential else dense
        stats = {n: LayerStats() for n, _ in inside}
        hooks = [
            dict(source.named_modules())[n].register_forward_pre_hook(
                lambda mod, args, s=stats[n]: s.add(layer_inputs(mod, args[0]), gram=True)
            )
            for n, _ in inside
        ]
        for batch in batches:
            source(batch)
        for h in hooks:
            h.remove()
        for name, module in inside:
            weight = as_matrix(module.weight)
            new, keep = method.prune_layer(weight, stats[name])
            module.weight.copy_(
                from_matrix((new if new is not None else weight) * keep, weight.shape)
            )
        del dense_block


@pytest.mark.parametrize("family", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("make", [Wanda, SparseGPT], ids=["wanda", "sparsegpt"])
def test_block_k_is_calibrated_on_the_outputs_of_the_pruned_blocks(family, make) -> None:
    batches = _batches()
    ours = _model(family)
    method = make(sparsity=0.5, calibration_samples=8)
    method.attach(ours)
    method.prune(ours, batches)

    reference = _model(family)
    _explicit(reference, make(sparsity=0.5, calibration_samples=8), batches, sequential=True)
    one_pass = _model(family)
    _explicit(one_pass, make(sparsity=0.5, calibration_samples=8), batches, sequential=False)

    last = [n for n, _ in method.masks][-1]  # a layer of the last block
    weights = {n: m.weight for n, m in ours.named_modules() if n in dict(method.masks)}
    for name, weight in weights.items():
        assert torch.allclose(weight, dict(reference.named_modules())[name].weight, atol=1e-5), name
        assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    # ... and the dense model's statistics would have pruned the later blocks otherwise.
    assert not torch.allclose(weights[last], dict(one_pass.named_modules())[last].weight, atol=1e-5)


def test_gpt2_conv1d_layers_become_linear_with_the_same_function() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQLEN, n_embd=32, n_layer=2, n_head=2)
    original = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, VOCAB, (2, SEQLEN))
    with torch.no_grad():
        expected = original(input_ids=ids).logits
    from sparsebench.models.language import CausalLM

    converted = CausalLM(copy.deepcopy(original)).eval()
    linear = [n for n, m in converted.named_modules() if isinstance(m, nn.Linear)]
    assert len(linear) == 2 * 4 + 1  # c_attn, c_proj, c_fc, mlp.c_proj per block; lm_head
    with torch.no_grad():
        assert torch.allclose(converted(ids), expected, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none is visible)")
def test_pruning_on_a_gpu_gives_the_cpus_result_and_leaves_the_model_where_it_was() -> None:
    on_cpu, on_gpu = _model(), _model()
    for model, device in ((on_cpu, None), (on_gpu, "cuda")):
        method = SparseGPT(name="sparsegpt", sparsity=0.5)
        method.attach(model)
        method.prune(model, _batches(), device=device)
    assert next(on_gpu.parameters()).device.type == "cpu"
    for (name, a), b in zip(on_cpu.named_parameters(), on_gpu.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-3), name


@pytest.mark.slow
def test_on_a_trained_tiny_llama_sparsegpt_and_wanda_order_below_magnitude_as_reported() -> None:
    """A fixed-seed check of the papers' ordering on a small LLaMA trained on Shakespeare for
    600 steps (~30 s): SparseGPT below magnitude at 50% and 2:4, Wanda below magnitude and
    above SparseGPT at 2:4. At 50% Wanda is *above* magnitude on a model this small and short
    trained (seeds 0, 1, 2: +1.0, +1.2, +1.3 perplexity), so that is not asserted; the claim file
    lm_pruning measures it on the full-size tiny model (docs/claims.md)."""
    import math

    import torch.nn.functional as F

    from sparsebench.data.text import ShakespeareDataModule
    from sparsebench.pruning import OneShotMagnitude

    torch.manual_seed(0)
    data = ShakespeareDataModule("shakespeare", seqlen=64, vocab_size=1024, batch_size=16)
    data.setup("fit")
    train = data.train_set.tensors[0]
    test = torch.stack([data.test_set[i][0] for i in range(200)])
    model = tiny_llama(
        vocab_size=1024, max_positions=64, hidden_size=64, num_layers=2, intermediate_size=176
    )
    steps = 600
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    gen = torch.Generator().manual_seed(0)
    calibration = list(train[torch.randperm(len(train), generator=gen)[:64]].split(16))
    for index in torch.randperm(len(train), generator=gen)[: steps * 16].split(16):
        x = train[index]
        F.cross_entropy(model(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step(), optimizer.zero_grad(), schedule.step()

    @torch.no_grad()
    def perplexity(pruned: nn.Module) -> float:
        logits = pruned.eval()(test)
        return math.exp(F.cross_entropy(logits[:, :-1].flatten(0, 1), test[:, 1:].flatten()))

    ppl = {}
    for method in (OneShotMagnitude, Wanda, SparseGPT):
        for pattern in ({"sparsity": 0.5}, {"pattern": "2:4"}):
            pruned = copy.deepcopy(model)
            prune = method(name=method.__name__, **pattern)
            prune.attach(pruned)
            prune.prune(pruned, calibration)
            ppl[method.__name__, "pattern" in pattern] = perplexity(pruned)
    assert perplexity(model) < ppl["SparseGPT", False] < ppl["OneShotMagnitude", False]
    assert ppl["SparseGPT", True] < ppl["Wanda", True] < ppl["OneShotMagnitude", True]
