"""Tiny random Hugging Face models built offline from a config (transformers is a test
dependency only), saved as a model folder the way the hub holds them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

D_VOCAB = 96
TEXT = "the cat sat on the mat. the dog sat on the log."

# The shape every rotary family shares: 2 layers, 4 heads, d_model 32, d_mlp 48, ctx 24.
SHAPE = dict(
    num_hidden_layers=2,
    num_attention_heads=4,
    hidden_size=32,
    intermediate_size=48,
    max_position_embeddings=24,
)

# name -> (config class, model class, config kwargs)
FAMILIES = {
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(n_layer=2, n_head=4, n_embd=32, n_positions=24),
    ),
    "gpt2_untied": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(n_layer=2, n_head=4, n_embd=32, n_positions=24, tie_word_embeddings=False),
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            **SHAPE,
            rope_parameters={"rope_theta": 500.0, "partial_rotary_factor": 0.5},
        ),
    ),
    "gpt_neox_sequential": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            **SHAPE,
            use_parallel_residual=False,
            tie_word_embeddings=True,
        ),
    ),
    "gpt_neox_full_rotary": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            **SHAPE,
            use_parallel_residual=False,
            attention_bias=False,
            rope_parameters={"rope_theta": 700.0, "partial_rotary_factor": 1.0},
        ),
    ),
    "gpt_neox_linear_rope": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            **SHAPE,
            rope_parameters={"rope_type": "linear", "factor": 3.0, "rope_theta": 100.0},
        ),
    ),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            **SHAPE,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 300.0},
        ),
    ),
    # Llama 3.1/3.2's rescaled frequencies: d_head 8 at base 100 turns at wavelengths 6.3,
    # 19.9, 62.8 and 199 positions, one in each band of the scaling (kept below 32 / 4,
    # interpolated between, slowed by the factor above 32 / 1)
    "llama3_rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            SHAPE,
            max_position_embeddings=64,  # extended past the original 32, as Llama 3.1's
            num_key_value_heads=2,
            head_dim=8,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 100.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
    ),
    "llama_mqa_bias_tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            **SHAPE,
            num_key_value_heads=1,
            head_dim=6,
            attention_bias=True,
            tie_word_embeddings=True,
        ),
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(
            **SHAPE,
            num_key_value_heads=1,
            head_dim=12,
            sliding_window=None,
        ),
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            **SHAPE,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
    ),
}


def hf_model(name: str, seed: int = 0):
    """A tiny random model of family `name`, weights noised (norms and biases included) so
    that a wrong transpose, split or convention shows in the logits."""
    cfg_cls, model_cls, kwargs = FAMILIES[name]
    cfg = getattr(transformers, cfg_cls)(vocab_size=D_VOCAB, **kwargs)
    cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = None
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.config._attn_implementation = "eager"
    return model


def tiny_tokenizer():
    """A byte-level BPE of fewer than D_VOCAB tokens, trained on TEXT."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=D_VOCAB - 8, initial_alphabet=[])
    tok.train_from_iterator([TEXT] * 4, trainer)
    assert tok.get_vocab_size() <= D_VOCAB, (tok.get_vocab_size(), len(alphabet))
    return tok


def save_folder(model, out: Path, tokenizer=None, **save_kwargs) -> Path:
    """save_pretrained (safetensors; max_shard_size= for shards) plus tokenizer.json."""
    model.save_pretrained(out, **save_kwargs)
    if tokenizer is not None:
        tokenizer.save(str(out / "tokenizer.json"))
    return out


def hf_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits.float()
