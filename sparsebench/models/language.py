"""Causal language models through transformers: small ones built from their configs (no
download) for the embedded default and the tests, and any checkpoint ``AutoModelForCausalLM``
loads. Their prunable layers are the Linear layers of the decoder blocks (attention and MLP);
embeddings and ``lm_head`` stay dense, as in the pruning papers (SparseGPT, Wanda)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsebench.errors import ConfigError, first_line


class CausalLM(nn.Module):
    """A transformers causal LM whose forward takes token ids and returns the logits (the
    harness's models map inputs to outputs; the module computes the shifted loss)."""

    # The input meets an embedding (never pruned), not a Linear stem: with dense_stem (the
    # default) every decoder Linear is prunable; lm_head is the head (dense by default).
    embeds_input = True

    def __init__(self, model: nn.Module, pretrained: bool = False) -> None:
        super().__init__()
        self.lm = _linear_layers(model)
        # Weights read from a checkpoint (hf_causal_lm), not initialised: the prune runner
        # prunes them as they are (no dense training first).
        self.pretrained = pretrained

    def get_classifier(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def blocks(self) -> nn.ModuleList:
        """The decoder blocks, in order (``layers`` of Llama and OPT, ``h`` of GPT-2): the
        model's largest ModuleList, found rather than named per family."""
        lists = [m for m in self.lm.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
        return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))

    def mlp_layers(self) -> tuple[str, ...]:
        """The MLP blocks' Linear layers (qualified names): each decoder block's Linears
        outside its attention module (LLaMA's gate/up/down, GPT-2's c_fc/c_proj, OPT's
        fc1/fc2), found by the attention module's class rather than named per family."""
        blocks = self.blocks()
        prefix = next(n for n, m in self.named_modules() if m is blocks)
        names = []
        for i, block in enumerate(blocks):
            attention = [
                m for m in block.modules() if m is not block and "Attention" in type(m).__name__
            ]
            inside = {id(m) for a in attention for m in a.modules()}
            names += [
                f"{prefix}.{i}.{n}"
                for n, m in block.named_modules()
                if isinstance(m, nn.Linear) and id(m) not in inside
            ]
        return tuple(names)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


class _Cache:
    """A decode step's KV cache; a copied module starts without one, so that a converted copy
    (sparse kernels, another device or dtype) fills its own from its own weights."""

    def __init__(self) -> None:
        self.window: torch.Tensor | None = None
        self.cache: Any = None

    def __deepcopy__(self, memo: dict) -> _Cache:
        return _Cache()


class DecodeStep(nn.Module):
    """One step of generation with a KV cache: ``forward(window)`` returns the logits of the
    window's last token given the cache of the tokens before it, the per-token cost of
    batch-1 decoding (a hardware target times it as it times a forward pass).

    The cache is filled by the first call for a window and cut back by one token after every
    step, so repeated calls time the same step. The decoder is the model's own (``lm``: the
    same layer names as the :class:`CausalLM`, so a target converts the same layers)."""

    embeds_input = True

    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        self.lm = model.lm
        self.slot = _Cache()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        slot = self.slot
        if slot.window is not input_ids:
            slot.cache = self.lm(input_ids=input_ids[:, :-1], use_cache=True).cache
            slot.window = input_ids
        logits = self.lm(input_ids=input_ids[:, -1:], cache=slot.cache, use_cache=True).logits
        slot.cache.crop(-1)  # back to the window's prefix: the next call is the same step
        return logits


def check_fits(node: Any, seqlen: int, tokens: int) -> None:
    """Refuse (one sentence, before any weight is read) windows of ``seqlen`` tokens longer
    than the configured model's positions, or a tokenizer of ``tokens`` ids more than its
    embedding's rows; a checkpoint's limits come from its config.json."""
    if node.get("name_or_path"):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(_where(node.name_or_path))
        except (OSError, ValueError) as exc:
            raise _not_found(node.name_or_path, exc) from None
        positions = getattr(config, "max_position_embeddings", None)
        rows, family = config.vocab_size, config.model_type
    else:
        positions, rows, family = node.max_positions, node.vocab_size, node.model_name
    if positions is not None and seqlen > positions:
        raise ConfigError(
            f"dataset.seqlen={seqlen} is more than the {positions} positions of model "
            f"'{family}'; use dataset.seqlen <= {positions}."
        )
    if tokens > rows:
        raise ConfigError(
            f"the dataset's tokenizer has {tokens} tokens, more than the {rows} rows of model "
            f"'{family}''s embedding; give the model's own tokenizer (dataset.tokenizer) or a "
            "smaller dataset.vocab_size."
        )


def _where(name_or_path: str) -> str:
    local = Path(name_or_path).expanduser()
    return str(local) if local.is_dir() else name_or_path


def _not_found(name_or_path: str, exc: Exception) -> ConfigError:
    where = (
        "folder"
        if Path(name_or_path).expanduser().is_dir()
        else "name (not a folder here, nor on the hub or in its cache)"
    )
    return ConfigError(
        f"model.name_or_path={name_or_path}: no causal language model at this {where}: "
        f"{first_line(exc, 200)}"
    )


def _linear_layers(model: nn.Module) -> nn.Module:
    """GPT-2's ``Conv1D`` layers (a Linear stored as in x out) as ``nn.Linear``, in place.

    Pruning, N:M patterns, the sparse kernels and FLOP counting all read ``nn.Linear``; a
    transposed copy computes the same function (transformers has no such conversion)."""
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.nf, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.T)
                    linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)
    return model


def tiny_llama(
    model_name: str = "tiny_llama",
    vocab_size: int = 2048,
    max_positions: int = 128,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 352,
) -> CausalLM:
    """A small ``LlamaForCausalLM`` (RMSNorm, rotary positions, SwiGLU MLP), untied head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )
    return CausalLM(LlamaForCausalLM(config))


def tiny_gpt2(
    model_name: str = "tiny_gpt2",
    vocab_size: int = 2048,
    max_positions: int = 128,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 512,
) -> CausalLM:
    """A small ``GPT2LMHeadModel`` (LayerNorm, learned positions, GELU MLP), untied head; its
    ``Conv1D`` layers become ``nn.Linear``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=max_positions,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        n_inner=intermediate_size,
        bos_token_id=0,  # the end token of the embedded BPE (sparsebench.data.text.EOS)
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    return CausalLM(GPT2LMHeadModel(config))


def hf_causal_lm(
    name_or_path: str, model_name: str = "hf_causal_lm", dtype: str = "float32"
) -> CausalLM:
    """``AutoModelForCausalLM.from_pretrained(name_or_path)``: a local folder (config.json and
    safetensors weights, as ``save_pretrained`` writes them) or a hub id. Weights are read from
    safetensors only (``use_safetensors=True``): a pickled checkpoint is never unpickled."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            _where(name_or_path),
            dtype=getattr(torch, dtype),
            use_safetensors=True,
            local_files_only=Path(name_or_path).expanduser().is_dir(),
        )
    except (OSError, ValueError) as exc:
        raise _not_found(name_or_path, exc) from None
    return CausalLM(model, pretrained=True)
