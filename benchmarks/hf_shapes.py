"""Random Hugging Face folders at the shapes researchers study, built offline by
`transformers` (`from_config` + `save_pretrained`; nothing is downloaded), for the scale
benchmarks (`analyze_scale.py --shape`, `explore_scale.py --shape`).

Each folder gets a tokenizer.json of the real tokenizer's size (a byte-level BPE whose
merges are byte pairs, so every id up to that size is a token; Pythia's 50,304 ids are
padded past its 50,277 tokens as the real one is), weights in the dtype the hub stores, and
`reference.safetensors` beside it: transformers' fp32 logits on REFERENCE_TOKENS, from the
stored (rounded) weights, for `check_logits`.
"""

from __future__ import annotations

import gc
import itertools
from pathlib import Path

import torch

# name -> (config class, model class, stored dtype, tokenizer size, config kwargs)
SHAPES = {
    "gpt2-medium": (
        "GPT2Config",
        "GPT2LMHeadModel",
        torch.float32,  # openai-community/gpt2-medium's model.safetensors is fp32
        50257,
        dict(n_layer=24, n_head=16, n_embd=1024, n_positions=1024, vocab_size=50257),
    ),
    "pythia-410m": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        torch.float16,  # EleutherAI/pythia-410m's model.safetensors is fp16
        50277,
        dict(
            num_hidden_layers=24,
            num_attention_heads=16,
            hidden_size=1024,
            intermediate_size=4096,
            max_position_embeddings=2048,
            vocab_size=50304,
            use_parallel_residual=True,
            rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.25},
            tie_word_embeddings=False,
        ),
    ),
    "tinyllama-1.1b": (
        "LlamaConfig",
        "LlamaForCausalLM",
        torch.bfloat16,  # TinyLlama-1.1B's model.safetensors is bf16
        32000,
        dict(
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            hidden_size=2048,
            intermediate_size=5632,
            max_position_embeddings=2048,
            vocab_size=32000,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
        ),
    ),
    "llama-3.2-1b": (
        "LlamaConfig",
        "LlamaForCausalLM",
        torch.bfloat16,  # meta-llama/Llama-3.2-1B's model.safetensors is bf16
        128256,
        dict(
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            hidden_size=2048,
            head_dim=64,
            intermediate_size=8192,
            max_position_embeddings=131072,
            vocab_size=128256,
            rms_norm_eps=1e-5,
            rope_parameters={  # Llama 3's rescaled frequencies (qkov.rotary)
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            tie_word_embeddings=True,
        ),
    ),
}
REFERENCE_TOKENS = torch.tensor([[1, 400, 3000, 17, 9000, 25000, 400, 3000, 17, 31000, 5, 77]])


def byte_pair_tokenizer(n_tokens: int):
    """A byte-level BPE of exactly n_tokens tokens: the 256 bytes, then merges of byte pairs
    in order, then (past 65,792, Llama 3's 128,256) of a pair and a byte (the last id is
    <|endoftext|>, a special token, as GPT-2's and Pythia's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = []
    pairs = [(a, b) for a in alphabet for b in alphabet]
    for a, b in itertools.chain(pairs, ((a + b, c) for a, b in pairs for c in alphabet)):
        if len(vocab) >= n_tokens - 1:
            break
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    assert tok.get_vocab_size() == n_tokens, tok.get_vocab_size()
    return tok


def build(shape: str, root: Path) -> Path:
    """root/shape: config.json, model.safetensors (shards past 2 GB), tokenizer.json; and
    root/shape.reference.safetensors. Kept if already there."""
    import transformers
    from safetensors.torch import save_file

    folder = root / shape
    reference = root / f"{shape}.reference.safetensors"
    if (folder / "config.json").exists() and reference.exists():
        return folder
    cfg_cls, model_cls, dtype, n_tokens, kwargs = SHAPES[shape]
    cfg = getattr(transformers, cfg_cls)(**kwargs)
    cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = None
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    model.to(dtype)
    model.save_pretrained(folder, max_shard_size="2GB")
    byte_pair_tokenizer(n_tokens).save(str(folder / "tokenizer.json"))
    del model
    gc.collect()
    # The reference reads the folder back in fp32, as qkov.load does. (The model in memory,
    # cast to bf16 and back, is not it: its rotary inv_freq buffer was rounded to bf16 too,
    # which moves TinyLlama's logits by 2.5e-3.)
    model = getattr(transformers, model_cls).from_pretrained(folder, dtype=torch.float32).eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        logits = model(REFERENCE_TOKENS).logits.float()
    save_file({"tokens": REFERENCE_TOKENS, "logits": logits}, str(reference))
    del model
    gc.collect()
    return folder


def check_logits(shape: str, root: Path) -> tuple[float, float, float]:
    """(max |qkov - transformers| over the reference logits, their max |logit|, the largest
    difference of the next-token losses) for the folder `build` wrote."""
    from safetensors.torch import load_file

    import qkov
    from qkov.loss import next_token_loss

    ref = load_file(str(root / f"{shape}.reference.safetensors"))
    model = qkov.load(root / shape)
    with torch.no_grad():
        ours = model(ref["tokens"]).float()
    diff = (ours - ref["logits"]).abs().max().item()
    loss = next_token_loss(ours, ref["tokens"]) - next_token_loss(ref["logits"], ref["tokens"])
    return diff, ref["logits"].abs().max().item(), abs(loss.item())


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description="build random folders; --check their logits")
    ap.add_argument("root", type=Path)
    ap.add_argument("shapes", nargs="+", choices=list(SHAPES))
    ap.add_argument("--check", action="store_true", help="qkov's logits against transformers'")
    args = ap.parse_args()
    for name in args.shapes:
        if not args.check:
            print(f"{name}: {build(name, args.root)} ({SHAPES[name][2]})")
            continue
        diff, scale, loss_diff = check_logits(name, args.root)
        ok = diff <= 1e-4 * max(1.0, scale)
        print(
            f"{name}: qkov vs transformers on {REFERENCE_TOKENS.shape[1]} tokens: max |logit "
            f"difference| {diff:.2e} (max |logit| {scale:.2f}), loss difference {loss_diff:.1e}"
            + ("" if ok else "  MISMATCH")
        )
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
