"""A plain attention-only transformer on SDPA (nanoGPT's manner): the yardstick qkov's
fast path is measured against. Same architecture as qkov's default model (shortformer
positions: W_pos enters only the inputs of queries and keys; no norm, no biases), written
the straightforward way: nn.Linear weights [out, in], queries and keys from one Linear,
values from another."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkov import ModelConfig


class PlainSDPA(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D, V = cfg.d_model, cfg.d_vocab
        self.cfg = cfg
        self.embed = nn.Embedding(V, D)
        self.pos = nn.Parameter(torch.randn(cfg.n_ctx, D) * 0.02)
        self.qk = nn.ModuleList(nn.Linear(D, 2 * D, bias=False) for _ in range(cfg.n_layers))
        self.v = nn.ModuleList(nn.Linear(D, D, bias=False) for _ in range(cfg.n_layers))
        self.o = nn.ModuleList(nn.Linear(D, D, bias=False) for _ in range(cfg.n_layers))
        self.unembed = nn.Linear(D, V, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [batch, pos] -> logits [batch, pos, d_vocab]."""
        B, n = tokens.shape
        H, Dh = self.cfg.n_heads, self.cfg.d_model // self.cfg.n_heads
        resid = self.embed(tokens)
        pos = self.pos[:n]
        for qk, v_proj, o in zip(self.qk, self.v, self.o, strict=True):
            q, k = qk(resid + pos).split(H * Dh, dim=-1)
            v = v_proj(resid)
            q, k, v = (t.view(B, n, H, Dh).transpose(1, 2) for t in (q, k, v))
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            resid = resid + o(z.transpose(1, 2).reshape(B, n, H * Dh))
        return self.unembed(resid)
