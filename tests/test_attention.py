"""qkov.attention.causal_attention and its compiled CPU kernel (qkov.kernels): outputs and
gradients against the definition (float64 softmax(q k^T / sqrt(d_head), causal) v), the
fallback to PyTorch where the kernel cannot run, and the model's fast path through it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qkov import ModelConfig, Transformer, kernels
from qkov import attention as attn


def reference(q, k, v):
    """The definition, in float64."""
    q, k, v = (x.double() for x in (q, k, v))
    n = q.shape[2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


def qkv(B, H, n, Dh, layout="contiguous", scale=1.0, seed=0):
    """q, k, v [B, H, n, Dh] leaves; "packed": views into one [B, n, 3, H, Dh] buffer, as the
    model's fast path makes them (strides between positions of 3 H Dh floats)."""
    g = torch.Generator().manual_seed(seed)
    if layout == "packed":
        buf = torch.randn(B, n, 3, H, Dh, generator=g) * scale
        buf.requires_grad_(True)
        q, k, v = buf.permute(2, 0, 3, 1, 4)
        return buf, (q, k, v)
    q, k, v = (torch.randn(B, H, n, Dh, generator=g).mul(scale).requires_grad_() for _ in range(3))
    return None, (q, k, v)


def has_compiler() -> bool:
    return kernels.compiler() is not None


def test_the_kernel_builds_where_there_is_a_compiler():
    # No skip either way: with a compiler the kernel must build (and then every test below
    # exercises it); without one the fallback must say why.
    if has_compiler():
        assert attn.kernel_available(32), kernels.reason("causal_attention", ("DH=32",))
    else:
        assert not attn.kernel_available(32)
        assert "compiler" in kernels.reason("causal_attention", ("DH=32",))


@pytest.mark.parametrize(
    "B,H,n,Dh,layout",
    [
        (2, 3, 1, 32, "contiguous"),
        (2, 3, 7, 32, "packed"),
        (1, 2, 31, 16, "contiguous"),
        (2, 2, 32, 32, "packed"),
        (3, 1, 33, 64, "contiguous"),
        (2, 4, 100, 32, "packed"),
        (1, 2, 70, 128, "contiguous"),
    ],
)
def test_outputs_and_gradients_equal_the_definition(B, H, n, Dh, layout):
    leaf, (q, k, v) = qkv(B, H, n, Dh, layout)
    out = attn.causal_attention(q, k, v)
    exact = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = reference(*exact)
    assert out.shape == (B, H, n, Dh)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)
    do = torch.randn(B, H, n, Dh, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_grads = torch.autograd.grad(ref, exact, do.double())
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("split_v", [False, True])
@pytest.mark.parametrize("n,Dh", [(1, 32), (45, 32), (70, 64)])
def test_packed_heads_equal_the_definition_and_their_gradients_keep_the_layout(split_v, n, Dh):
    # the model's layouts: [B, n, 3 H Dh] (one projection), or [B, n, 2 H Dh] and
    # [B, n, H Dh] (shortformer: queries and keys read x + pos, values x)
    B, H = 2, 3
    g = torch.Generator().manual_seed(2)
    if split_v:
        qk = torch.randn(B, n, 2 * H * Dh, generator=g, requires_grad=True)
        v = torch.randn(B, n, H * Dh, generator=g, requires_grad=True)
        leaves, views = (qk, v), (*qk.view(B, n, 2, H, Dh).unbind(2), v.view(B, n, H, Dh))
        z = attn.causal_attention_packed(qk, H, v)
    else:
        buf = torch.randn(B, n, 3 * H * Dh, generator=g, requires_grad=True)
        leaves, views = (buf,), buf.view(B, n, 3, H, Dh).unbind(2)
        z = attn.causal_attention_packed(buf, H)
    q, k, vh = (x.transpose(1, 2) for x in views)  # [B, H, n, Dh]
    exact = [x.detach().double().requires_grad_() for x in leaves]
    if split_v:
        qk64, v64 = exact
        ev = (*qk64.view(B, n, 2, H, Dh).unbind(2), v64.view(B, n, H, Dh))
    else:
        ev = exact[0].view(B, n, 3, H, Dh).unbind(2)
    ref = reference(*(x.transpose(1, 2) for x in ev)).transpose(1, 2).reshape(B, n, H * Dh)
    assert z.shape == (B, n, H * Dh) and z.is_contiguous()
    torch.testing.assert_close(z.double(), ref, atol=2e-6, rtol=1e-5)
    dz = torch.randn(B, n, H * Dh, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(z, leaves, dz)
    ref_grads = torch.autograd.grad(ref, exact, dz.double())
    for got, want, leaf in zip(grads, ref_grads, leaves, strict=True):
        assert got.shape == leaf.shape and got.is_contiguous()
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    # and the same numbers as causal_attention on the views
    torch.testing.assert_close(
        z, attn.causal_attention(q, k, vh).transpose(1, 2).reshape(B, n, H * Dh), atol=0, rtol=0
    )


def test_packed_heads_not_contiguous_take_the_views_path():
    buf = torch.randn(2, 9, 2 * 3 * 3 * 32)[..., ::2]  # every other column: not contiguous
    z = attn.causal_attention_packed(buf, 3)
    q, k, v = buf.view(2, 9, 3, 3, 32).permute(2, 0, 3, 1, 4)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(z, expected.transpose(1, 2).reshape(2, 9, 96))


def test_the_kernels_log_sum_exp_of_each_row_is_exact():
    # the backward pass recomputes P from this (the kernel's own vector log and exp). With
    # all scores 0 a row's log-sum-exp is log(len) exactly; on random scores it is no
    # further from the float64 definition than PyTorch's float32 logsumexp of them.
    if not attn.kernel_available(32):
        assert attn.implementation(32, "cpu").startswith("PyTorch SDPA")
        return
    zeros = torch.zeros(1, 1, 300, 32)
    lse = attn._kernel_forward(zeros, zeros, zeros, torch.empty_like(zeros))
    exact = torch.arange(1, 301, dtype=torch.float64).log()
    torch.testing.assert_close(lse[0, 0].double(), exact, rtol=2e-7, atol=1e-7)
    mask = torch.ones(100, 100, dtype=torch.bool).triu(1)
    for scale in (1.0, 5.0):
        _, (q, k, v) = qkv(2, 3, 100, 32, scale=scale, seed=3)
        q, k, v = (x.detach() for x in (q, k, v))
        o = torch.empty_like(q)
        lse = attn._kernel_forward(q, k, v, o).double()
        exact = (q.double() @ k.double().transpose(-1, -2) / math.sqrt(32)).masked_fill(
            mask, float("-inf")
        )
        theirs = (q @ k.transpose(-1, -2) / math.sqrt(32)).masked_fill(mask, float("-inf"))
        torch_error = (theirs.logsumexp(-1).double() - exact.logsumexp(-1)).abs().max()
        assert (lse - exact.logsumexp(-1)).abs().max() <= max(2 * torch_error, 1e-6)


def test_large_scores_stay_finite_and_as_exact_as_pytorchs():
    # scores of several hundred: a softmax that did not subtract the row's max would
    # overflow. At that size float32 scores carry errors of ~1e-3 whatever computes them,
    # so the bar is PyTorch's own float32 kernel, against the float64 definition.
    _, (q, k, v) = qkv(2, 2, 40, 32, scale=6.0)
    exact = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = reference(*exact)
    (rq,) = torch.autograd.grad(ref.sum(), exact[:1])
    errors = {}
    for name, on in (("kernel", True), ("sdpa", False)):
        with attn.kernel_enabled(on):
            out = attn.causal_attention(q, k, v)
            (gq,) = torch.autograd.grad(out.sum(), (q,))
        assert torch.isfinite(out).all() and torch.isfinite(gq).all()
        errors[name] = ((out.double() - ref).abs().max(), (gq.double() - rq).abs().max())
    for ours, theirs in zip(errors["kernel"], errors["sdpa"], strict=True):
        assert ours <= max(2 * theirs, 1e-5)


def test_heads_merge_without_a_copy():
    _, (q, k, v) = qkv(2, 4, 10, 32)
    z = attn.causal_attention(q, k, v)
    merged = z.transpose(1, 2).reshape(2, 10, 4 * 32)
    assert (merged._base is not None) == attn.kernel_available(32)  # a view, with the kernel


def test_result_does_not_depend_on_the_thread_count():
    # each (batch, head) pair is computed whole by one thread: bitwise the same split any way
    _, (q, k, v) = qkv(3, 5, 45, 32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = attn.causal_attention(q, k, v)
        g1 = torch.autograd.grad(one.sum(), (q, k, v))
        torch.set_num_threads(2)
        two = attn.causal_attention(q, k, v)
        g2 = torch.autograd.grad(two.sum(), (q, k, v))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_where_the_kernel_does_not_apply_it_is_sdpa():
    # d_head 24 (not a multiple of 16), float64, and autocast all take PyTorch's kernel
    _, (q, k, v) = qkv(2, 2, 9, 24)
    assert torch.equal(
        attn.causal_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True)
    )
    q64, k64, v64 = (x.detach().double() for x in qkv(1, 2, 9, 32)[1])
    assert not attn._uses_kernel(q64, k64, v64)
    _, (q, k, v) = qkv(1, 2, 9, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not attn._uses_kernel(q, k, v)


def test_disabled_or_unbuildable_kernels_fall_back_and_say_why(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_reasons", {})
    monkeypatch.setenv("QKOV_CACHE", str(tmp_path))
    monkeypatch.setenv("QKOV_KERNELS", "0")
    assert kernels.load("causal_attention", ("DH=32",)) is None
    assert kernels.reason("causal_attention", ("DH=32",)) == "QKOV_KERNELS=0"
    monkeypatch.delenv("QKOV_KERNELS")
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    assert kernels.load("causal_attention", ("DH=16",)) is None
    assert "failed" in kernels.reason("causal_attention", ("DH=16",))
    monkeypatch.setenv("CC", "no-such-compiler-qkov")
    assert kernels.load("causal_attention", ("DH=48",)) is None
    assert "no C compiler" in kernels.reason("causal_attention", ("DH=48",))
    assert not list(tmp_path.rglob("*.so"))  # nothing half-built left in the cache
    _, (q, k, v) = qkv(1, 2, 9, 48)
    assert not attn._uses_kernel(q, k, v)


def test_a_fresh_cache_builds_once_and_reuses_the_library(monkeypatch, tmp_path):
    if not has_compiler():
        assert not attn.kernel_available(32)
        return
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("QKOV_CACHE", str(tmp_path))
    assert kernels.load("causal_attention", ("DH=32",)) is not None
    built = list((tmp_path / "kernels").glob("causal_attention-DH=32-*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(kernels, "_loaded", {})
    assert kernels.load("causal_attention", ("DH=32",)) is not None
    assert built[0].stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [built[0].name]


@pytest.mark.parametrize("positional", ["shortformer", "standard", "rotary"])
def test_the_models_training_step_matches_sdpa(monkeypatch, positional):
    cfg = ModelConfig(
        n_layers=2, d_model=64, n_heads=2, d_vocab=50, n_ctx=40, positional=positional,
        normalization="rms",
    )  # fmt: skip
    torch.manual_seed(0)
    model = Transformer(cfg)
    x = torch.randint(0, 50, (3, 33))

    def step():
        model.zero_grad()
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = step()
    monkeypatch.setattr(attn, "_uses_kernel", lambda q, k, v: False)
    sdpa_loss, sdpa_grads = step()
    assert loss == pytest.approx(sdpa_loss, abs=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, sdpa_grads[name], atol=1e-5, rtol=1e-4)
