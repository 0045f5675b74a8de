"""Causal language models through transformers: small ones built from their configs (no
download) for the embedded default and the tests, and any checkpoint ``AutoModelForCausalLM``
loads. Their prunable layers are the Linear layers of the decoder blocks (attention and MLP);
embeddings and ``lm_head`` stay dense, as in the pruning papers (SparseGPT, Wanda)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sparsebench.errors import ConfigError, first_line


class CausalLM(nn.Module):
    """A transformers causal LM whose forward takes token ids and returns the logits (the
    harness's models map inputs to outputs; the module computes the shifted loss)."""

    # The input meets an embedding (never pruned), not a Linear stem: with dense_stem (the
    # default) every decoder Linear is prunable; lm_head is the head (dense by default).
    embeds_input = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.lm = _linear_layers(model)

    def get_classifier(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def blocks(self) -> nn.ModuleList:
        """The decoder blocks, in order (``layers`` of Llama and OPT, ``h`` of GPT-2): the
        model's largest ModuleList, found rather than named per family."""
        lists = [m for m in self.lm.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
        return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))

    def check_fits(self, seqlen: int, tokens: int) -> None:
        """Refuse (one sentence) windows longer than the model's positions or a tokenizer with
        more ids than its embedding has rows."""
        config = self.lm.config
        positions = getattr(config, "max_position_embeddings", None)
        if positions is not None and seqlen > positions:
            raise ConfigError(
                f"dataset.seqlen={seqlen} is more than the {positions} positions of model "
                f"'{config.model_type}'; use dataset.seqlen <= {positions}."
            )
        rows = self.lm.get_input_embeddings().num_embeddings
        if tokens > rows:
            raise ConfigError(
                f"the dataset's tokenizer has {tokens} tokens, more than the {rows} rows of "
                f"model '{config.model_type}''s embedding; give the model's own tokenizer "
                "(dataset.tokenizer) or a smaller dataset.vocab_size."
            )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


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

    local = Path(name_or_path).expanduser()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(local) if local.is_dir() else name_or_path,
            dtype=getattr(torch, dtype),
            use_safetensors=True,
            local_files_only=local.is_dir(),
        )
    except (OSError, ValueError) as exc:
        where = (
            "folder"
            if local.is_dir()
            else "name (not a folder here, nor on the hub or in its cache)"
        )
        raise ConfigError(
            f"model.name_or_path={name_or_path}: no causal language model at this {where}: "
            f"{first_line(exc, 200)}"
        ) from None
    return CausalLM(model)
