"""The fused unembed + cross-entropy equals the plain computation, values and gradients."""

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from qkov import AttnOnlyTransformer, ModelConfig, QkovError, kernels
from qkov.loss import chunk_rows, target_logit_margin, unembed_cross_entropy


def plain(resid, W_U, targets):
    return F.cross_entropy((resid @ W_U).flatten(0, -2), targets.flatten())


@pytest.fixture(params=["kernel", "kernel, no MKL", "cpu branch", "accelerator branch"])
def branch(request, monkeypatch):
    """The ways the fused loss runs, all run here: qkov's C kernel (float32 on a CPU, where a
    compiler builds it), the whole loss in it where torch has MKL (`qkov_unembed_xent`) or
    only softmax - onehot between PyTorch's matmuls (without MKL, or with b_U); PyTorch's
    ops on a CPU (softmax, with a host-side underflow check) and an accelerator's
    (log-softmax, then exp)."""
    import qkov.loss

    if request.param.startswith("kernel"):
        probe = qkov.loss._softmax_xent(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
        assert (probe is not None) == has_compiler()  # with a compiler it must build
        if probe is None:
            return "cpu branch"  # (no compiler: what a CPU runs then)
        if request.param == "kernel, no MKL":
            monkeypatch.setattr(qkov.loss.kernels, "blas", lambda: None)
    else:
        monkeypatch.setattr(qkov.loss, "_kernel_enabled", False)
    on_host = request.param != "accelerator branch"
    monkeypatch.setattr(qkov.loss, "host_sync_is_free", lambda device: on_host)
    return "kernel" if request.param.startswith("kernel") else request.param


def has_compiler() -> bool:
    return kernels.compiler() is not None


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("scale", [1.0, -2.5])
@pytest.mark.parametrize("d_vocab", [50, 64])  # a remainder after 16-float vectors, and none
def test_value_and_gradients_match_plain(chunk, scale, d_vocab, branch):
    # the C kernel is float32 only: there against plain in float64, to float32's precision
    dtype = torch.float32 if branch == "kernel" else torch.float64
    g = torch.Generator().manual_seed(chunk)
    resid = torch.randn(3, 21, 16, generator=g, dtype=torch.float64) * 2
    W_U = torch.randn(16, d_vocab, generator=g, dtype=torch.float64)
    targets = torch.randint(d_vocab, (3, 21), generator=g)
    grads = []
    for fn, dt in ((plain, torch.float64), (fused(chunk), dtype)):
        r, w = (x.detach().to(dt).clone().requires_grad_() for x in (resid, W_U))
        loss = fn(r, w, targets)
        (scale * loss).backward()
        grads.append((loss.detach().double(), r.grad.double(), w.grad.double()))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


def fused(chunk):
    return lambda r, w, t: unembed_cross_entropy(r, w, t, chunk=chunk)


def test_a_target_too_unlikely_for_float32_costs_its_exact_loss(branch):
    """Logits 100 apart: p(target) ~ e^-100 underflows float32, yet the loss is the exact
    log-sum-exp minus the target's logit (not inf), and the gradients stay those of plain."""
    resid = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    W_U = torch.tensor([[100.0, 0.0, 3.0], [0.0, 50.0, 1.0]], requires_grad=True)
    t = torch.tensor([1, 0, 2])  # targets ~100, ~50 and ~96 nats below the top logit
    loss = unembed_cross_entropy(resid, W_U, t, chunk=2)
    ref_r, ref_w = resid.detach().clone().requires_grad_(), W_U.detach().clone().requires_grad_()
    ref = plain(ref_r, ref_w, t)
    assert 81 < loss.item() < 83  # their mean, 82
    torch.testing.assert_close(loss, ref)
    loss.backward(), ref.backward()
    torch.testing.assert_close(resid.grad, ref_r.grad)
    torch.testing.assert_close(W_U.grad, ref_w.grad)


def test_only_weights_need_gradients_and_no_grad_path():
    resid, W_U = torch.randn(40, 8), torch.randn(8, 30, requires_grad=True)
    t = torch.randint(30, (40,))
    unembed_cross_entropy(resid, W_U, t, chunk=9).backward()
    W_ref = W_U.detach().clone().requires_grad_()
    plain(resid, W_ref, t).backward()
    torch.testing.assert_close(W_U.grad, W_ref.grad)
    with torch.no_grad():
        torch.testing.assert_close(
            unembed_cross_entropy(resid, W_U, t, chunk=9), plain(resid, W_U, t)
        )
    assert chunk_rows(2048) == 1024 and chunk_rows(50_000) == 128
    assert chunk_rows(2048, max_rows=512) == 512 and chunk_rows(50_000, max_rows=512) == 128


def test_the_whole_loss_runs_in_the_kernel_where_torch_has_mkl():
    import qkov.loss

    x, W_U, t = torch.randn(6, 8), torch.randn(8, 32), torch.randint(32, (6,))
    whole = qkov.loss._whole_loss_kernel(x, W_U, t, 4)
    assert (whole is not None) == (has_compiler() and torch.backends.mkl.is_available())
    assert (kernels.blas() is not None) == torch.backends.mkl.is_available()


@contextmanager
def torch_setting(get, set_, value):
    """A process-wide torch setting (threads, default dtype) for the block, then restored."""
    before = get()
    set_(value)
    try:
        yield
    finally:
        set_(before)


def loss_and_grads(fn, resid, W_U, t, dtype=None):
    """fn(resid, W_U, t)'s loss and both gradients, on copies (in `dtype`, if given)."""
    r, w = (x.detach().to(dtype or x.dtype).clone().requires_grad_() for x in (resid, W_U))
    loss = fn(r, w, t)
    loss.backward()
    return loss.detach(), r.grad, w.grad


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 5, 67])  # fewer rows than threads; blocks left over
def test_whole_loss_kernel_splits_rows_between_any_threads(threads, n):
    """Each thread's rows, its blocks (4 rows) and its partial grad_W_U, summed: the same
    loss and gradients as plain (float64), whatever the thread count and row count."""
    g = torch.Generator().manual_seed(n)
    resid, W_U = torch.randn(n, 16, generator=g) * 2, torch.randn(16, 40, generator=g)
    t = torch.randint(40, (n,), generator=g)
    with torch_setting(torch.get_num_threads, torch.set_num_threads, threads):
        got = loss_and_grads(fused(4), resid, W_U, t)
    want = loss_and_grads(plain, resid, W_U, t, torch.float64)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("bad", [-1, 32])
def test_a_target_out_of_range_is_refused_before_any_kernel_runs(bad):
    x, W_U = torch.randn(4, 8, requires_grad=True), torch.randn(8, 32, requires_grad=True)
    t = torch.tensor([0, 3, bad, 5])
    with pytest.raises(QkovError, match=f"target id {bad} is out of range \\[0, 32\\)"):
        unembed_cross_entropy(x, W_U, t)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("smoothing", [0.1, 0.6])
def test_label_smoothing_equals_torchs_smoothed_cross_entropy(smoothing, bias, branch):
    """The fused cross-entropy plus ε times the target's logit less the mean logit (a term
    linear in the logits) equals F.cross_entropy(label_smoothing=ε): value and every
    gradient, in each branch of the fused loss."""
    g = torch.Generator().manual_seed(3)
    resid = torch.randn(2, 33, 16, generator=g, dtype=torch.float64) * 2
    W_U = torch.randn(16, 50, generator=g, dtype=torch.float64)
    b_U = torch.randn(50, generator=g, dtype=torch.float64) if bias else None
    targets = torch.randint(50, (2, 33), generator=g)
    dtype = torch.float32 if branch == "kernel" else torch.float64
    results = []
    for dt, torchs in ((torch.float64, True), (dtype, False)):
        leaves = [
            x.detach().to(dt).clone().requires_grad_() for x in (resid, W_U, b_U) if x is not None
        ]
        r, w, b = (*leaves, None) if len(leaves) == 2 else leaves
        if torchs:  # from the logits
            logits = (r @ w + (b if b is not None else 0)).flatten(0, -2)
            loss = F.cross_entropy(logits, targets.flatten(), label_smoothing=smoothing)
        else:
            loss = unembed_cross_entropy(r, w, targets, chunk=20, b_U=b)
            loss = loss + smoothing * target_logit_margin(r, w, targets, b)
        loss.backward()
        results.append([loss.detach().double()] + [x.grad.double() for x in leaves])
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **tol)
    plain_loss = F.cross_entropy(
        (resid @ W_U + (b_U if bias else 0)).flatten(0, -2), targets.flatten()
    )
    assert abs(results[0][0] - plain_loss) > 1e-3  # the smoothing changed the loss


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_the_models_label_smoothing_outside_zero_to_one_is_refused(bad):
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=12, d_vocab=40)
    x = torch.randint(40, (2, 13))
    with pytest.raises(QkovError, match="label smoothing must be in"):
        AttnOnlyTransformer(cfg)(x[:, :-1], x[:, 1:], label_smoothing=bad)


def test_the_model_keeps_the_plain_cross_entropy_of_a_smoothed_pass():
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=12, d_vocab=40, init_std=0.3)
    model = AttnOnlyTransformer(cfg)
    x = torch.randint(40, (4, 13))
    smoothed = model(x[:, :-1], x[:, 1:], label_smoothing=0.2)
    logits = model(x[:, :-1]).flatten(0, 1)
    torch.testing.assert_close(
        smoothed, F.cross_entropy(logits, x[:, 1:].flatten(), label_smoothing=0.2)
    )
    torch.testing.assert_close(
        model.last_cross_entropy, F.cross_entropy(logits, x[:, 1:].flatten())
    )


def test_model_loss_equals_loss_of_logits_with_same_gradients():
    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=16, n_ctx=12, d_vocab=40, init_std=0.3)
    a = AttnOnlyTransformer(cfg)
    b = AttnOnlyTransformer.from_weights(cfg, a.weights())
    x = torch.randint(40, (4, 13))
    la = a(x[:, :-1], x[:, 1:])  # fused unembedding + loss
    lb = F.cross_entropy(b(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())  # plain reference
    torch.testing.assert_close(la, lb)
    la.backward(), lb.backward()
    for name in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U"):
        torch.testing.assert_close(
            getattr(a, name).grad, getattr(b, name).grad, atol=1e-6, rtol=1e-5
        )
    with pytest.raises(QkovError, match="one target id per input token"):
        a(x[:, :-1], x[:, :-2])
    with pytest.raises(QkovError, match="out of range"):
        a(x[:, :-1], torch.full((4, 12), 40))


def test_fused_loss_under_autocast_matches_autocast_cross_entropy(branch):
    """Under bf16 autocast the fused loss runs its matmuls in bf16 (as autocast runs
    `resid @ W_U`) and its softmax in fp32: loss and gradients agree with autocast's own
    linear + cross-entropy to bf16 rounding."""
    from qkov.loss import unembed_cross_entropy

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 32, generator=g, requires_grad=True)
    W_U = (torch.randn(32, 1000, generator=g) * 0.3).requires_grad_()
    t = torch.randint(0, 1000, (300,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = unembed_cross_entropy(x, W_U, t, chunk=128)
        fused_grads = torch.autograd.grad(fused, [x, W_U])
        plain = F.cross_entropy((x @ W_U).float(), t)
        plain_grads = torch.autograd.grad(plain, [x, W_U])
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=0)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=2e-2 * b.abs().max().item())


def test_accelerator_chunk_keeps_softmax_in_the_logits_dtype_under_cuda_autocast(monkeypatch):
    """CUDA's autocast (not a CPU's) runs torch.softmax without a dtype in fp32: emulated
    here, the accelerator branch's softmax - onehot must still come out in bf16, the
    operand both gradient matmuls read, not as a [rows, d_vocab] fp32 copy."""
    import qkov.loss

    softmax = torch.softmax

    def cuda_autocast_softmax(x, dim, dtype=None):  # autocast's fp32_set_opt_dtype policy
        return softmax(x, dim, dtype=torch.float32 if dtype is None else dtype)

    monkeypatch.setattr(torch, "softmax", cuda_autocast_softmax)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(64, 300, generator=g).bfloat16()
    t = torch.randint(0, 300, (64,), generator=g)
    grad, loss = qkov.loss._low_precision_chunk(logits, t, torch.float32, grads=True)
    assert grad.dtype == torch.bfloat16 and loss.dtype == torch.float32
    expected = torch.softmax(logits.float(), -1)
    expected[torch.arange(64), t] -= 1.0
    torch.testing.assert_close(grad.float(), expected, rtol=0, atol=1e-2)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_fused_loss_with_padded_vocab_equals_cross_entropy(monkeypatch, autocast, bias, branch):
    """The GPU path pads W_U to a multiple of 64 columns with -inf logits: forced here on
    the CPU, loss and gradients (resid, W_U, b_U) still equal those of the plain logits
    (under autocast without b_U, the accelerator branch keeps the logits in bf16)."""
    import qkov.loss

    monkeypatch.setattr(qkov.loss, "vocab_padding", lambda d_vocab, device: (-d_vocab) % 64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 16, generator=g, requires_grad=True)
    W_U = (torch.randn(16, 101, generator=g) * 0.3).requires_grad_()
    b_U = torch.randn(101, generator=g, requires_grad=True) if bias else None
    leaves = [x, W_U, b_U] if bias else [x, W_U]
    t = torch.randint(0, 101, (300,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fused = qkov.loss.unembed_cross_entropy(x, W_U, t, chunk=128, b_U=b_U)
        fused_grads = torch.autograd.grad(fused, leaves)
        plain = F.cross_entropy((x @ W_U + (b_U if bias else 0)).float(), t)
        plain_grads = torch.autograd.grad(plain, leaves)
    tol = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(fused, plain, rtol=tol, atol=0)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        assert a.shape == b.shape and a.is_contiguous()
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=tol * b.abs().max().item())


def test_implementation_says_how_the_loss_runs_and_why(monkeypatch):
    import qkov.loss

    whole = has_compiler() and torch.backends.mkl.is_available()
    cpu = qkov.loss.implementation(16, 300, False, "cpu")
    assert cpu.startswith("qkov C kernel, the whole loss" if whole else "PyTorch")
    assert "(the model has b_U)" in qkov.loss.implementation(16, 300, True, "cpu")
    assert qkov.loss.implementation(16, 300, False, "meta") == "PyTorch, in chunks (not a CPU)"
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # another thread's partial grad_W_U: 4 * 1024 * 50257 bytes
    try:
        big = qkov.loss.implementation(1024, 50_257, False, "cpu")
    finally:
        torch.set_num_threads(before)
    assert "too much memory" in big or not whole
    monkeypatch.setattr(qkov.loss.kernels, "blas", lambda: None)
    no_mkl = qkov.loss.implementation(16, 300, False, "cpu")
    assert "(torch is not built with MKL)" in no_mkl or not has_compiler()


def test_float32_loss_is_right_whatever_torchs_default_dtype():
    x, W_U = torch.randn(9, 8), torch.randn(8, 32)
    t = torch.randint(32, (9,))
    # the kernels' buffers must still be float32 when torch makes float64 by default
    with torch_setting(torch.get_default_dtype, torch.set_default_dtype, torch.float64):
        got = loss_and_grads(fused(4), x, W_U, t)
    want = loss_and_grads(plain, x, W_U, t)
    assert got[0].dtype == torch.float32
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
