"""Analysis at scale (`qkov.budget.Budget`): the estimates a large vocabulary needs are
the exact values when their sample is the whole set, and the exact values of the sample
otherwise; small models keep every exact computation; `analyze` records the plan; the
--download flag's error paths (no test downloads anything)."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest
import torch

import qkov.analyze as A
import qkov.budget as budget
import qkov.progress
from qkov.circuits import direct_path, ov_circuit, qk_circuit, top_bigrams
from qkov.cli import main
from qkov.config import ModelConfig
from qkov.heads import copying_columns, copying_score
from qkov.model import AttnOnlyTransformer
from qkov.trigrams import sample_tokens, skip_trigrams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from analyze_scale import write_gpt2_folder  # noqa: E402
from hf_shapes import byte_pair_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def model() -> AttnOnlyTransformer:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_vocab=40, n_ctx=12)
    return AttnOnlyTransformer(cfg).eval()


def _key(t):
    return (t.source, t.destination, t.out, round(t.score, 5))


def test_sample_tokens_is_seeded_sorted_and_whole_at_full_size():
    assert torch.equal(sample_tokens(10, None), torch.arange(10))
    assert torch.equal(sample_tokens(10, 10), torch.arange(10))
    s = sample_tokens(100, 7, seed=3)
    assert torch.equal(s, sample_tokens(100, 7, seed=3)) and len(set(s.tolist())) == 7
    assert torch.equal(s, s.sort().values)


def test_skip_trigrams_sample_is_exact_top_k_of_its_sources(model):
    V = model.cfg.d_vocab
    full = skip_trigrams(model, 1, 0, k=6)
    assert [_key(t) for t in skip_trigrams(model, 1, 0, k=6, n_sources=V)] == [
        _key(t) for t in full
    ]
    # Over a sample: the brute-force top-6 of score(s, d, t) for the sampled sources only.
    src = sample_tokens(V, 9, seed=1)
    qk, ov = qk_circuit(model, 1, 0).dense(), ov_circuit(model, 1, 0).dense()
    a = (qk - qk.mean(1, keepdim=True)) / model.cfg.d_head**0.5  # [dest, src]
    o = ov - ov.mean(1, keepdim=True)  # [src, out]
    score = torch.sigmoid(a.T)[:, :, None] * o[:, None, :]  # [src, dest, out]
    want = score[src].flatten().topk(6).values
    got = skip_trigrams(model, 1, 0, k=6, n_sources=9, seed=1)
    assert {t.source for t in got} <= set(src.tolist())
    torch.testing.assert_close(torch.tensor([t.score for t in got]), want, atol=1e-5, rtol=0)


def test_top_bigrams_sample_is_exact_top_k_of_its_rows(model):
    V = model.cfg.d_vocab
    assert top_bigrams(model, 5, n_rows=V) == top_bigrams(model, 5)
    table = direct_path(model).dense()
    table = table - table.mean(1, keepdim=True)
    rows = sample_tokens(V, 11, seed=2)
    want = table[rows].flatten().topk(5).values
    got = top_bigrams(model, 5, n_rows=11, seed=2)
    torch.testing.assert_close(torch.tensor([b["logit"] for b in got]), want, atol=1e-5, rtol=0)


def _copy_inputs(model):
    tokens = torch.randint(
        0, model.cfg.d_vocab, (3, 10), generator=torch.Generator().manual_seed(0)
    )
    _, cache = model.run_with_hooks(tokens, cache_names=lambda n: n.startswith(("pattern.", "v.")))
    return cache["pattern.1"].float(), cache["v.1"].float(), tokens


def test_copying_score_sampled_columns_equal_exact_at_full_size_and_estimate_otherwise(model):
    pattern, value, tokens = _copy_inputs(model)
    V = model.cfg.d_vocab
    exact = copying_score(model, 1, pattern, value, tokens, n_columns=None)
    assert torch.equal(copying_score(model, 1, pattern, value, tokens), exact)  # auto: exact
    torch.testing.assert_close(
        copying_score(model, 1, pattern, value, tokens, n_columns=V), exact, atol=1e-6, rtol=0
    )
    # A sample: the rank among the sampled rivals, scaled to d_vocab - 1 (brute force).
    cols = sample_tokens(V, 13, seed=4)
    w = A.folded(model).weights() if hasattr(A, "folded") else model.weights()
    got = copying_score(model, 1, pattern, value, tokens, n_columns=13, seed=4)
    for h in range(model.cfg.n_heads):
        e = value[:, h] @ w["W_O"][1, h] @ w["W_U"]  # [batch, pos, V]
        own = e.gather(-1, tokens[..., None])
        rivals = torch.zeros(V, dtype=torch.bool)
        rivals[cols] = True
        c = torch.empty(tokens.shape)
        for b in range(tokens.shape[0]):
            for p in range(tokens.shape[1]):
                r = rivals.clone()
                r[tokens[b, p]] = False
                above = float((e[b, p, r] > own[b, p]).sum())
                c[b, p] = 1 - 2 * above / int(r.sum())
        want = (pattern[:, h].sum(1) * c).sum() / tokens.numel()
        torch.testing.assert_close(got[h], want, atol=1e-5, rtol=0)


def test_copying_score_in_token_chunks_and_head_groups_equals_one_block(monkeypatch):
    """The rank is computed a few tokens at a time (to stay in cache) and W_O W_U for a
    group of heads at a time: chunks of 1, 7 (not dividing the 30 tokens) and 4 tokens, and
    groups of 1, 2 (not dividing the 3 heads) and 3 heads, give the one-block score, exact
    and sampled."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, n_heads=3, d_model=24, d_head=8, d_vocab=40, n_ctx=12)
    model = AttnOnlyTransformer(cfg).eval()
    pattern, value, tokens = _copy_inputs(model)
    V, dh = cfg.d_vocab, cfg.d_head
    for n_columns in (None, 13):
        whole = copying_score(model, 1, pattern, value, tokens, n_columns=n_columns, seed=4)
        m = V if n_columns is None else n_columns
        for per_chunk, per_group in ((1, 1), (7, 2), (4, 3)):
            monkeypatch.setattr("qkov.heads._COPY_CHUNK", per_chunk * m)
            monkeypatch.setattr("qkov.heads._COPY_HEADS", per_group * dh * m)
            got = copying_score(model, 1, pattern, value, tokens, n_columns=n_columns, seed=4)
            torch.testing.assert_close(got, whole, atol=1e-6, rtol=0)


def test_copying_columns_exact_under_budget():
    assert copying_columns(2048, 16 * 128, 64) is None  # the demo models' probe
    m = copying_columns(50257, 16 * 128, 64)
    assert m is not None and m < 50257


def test_plan_keeps_small_models_exact_and_samples_gpt2_small():
    small = ModelConfig(n_layers=2, n_heads=8, d_model=256, d_vocab=2048, n_ctx=512)
    plan = budget.Budget.of(small, torch.zeros(63, 512, dtype=torch.long))
    assert plan == budget.Budget(
        None, None, plan.split_candidates, None, 63, None, True, None, True, plan.qk_sides
    )
    mlp = ModelConfig(n_layers=2, n_heads=8, d_model=512, d_vocab=2048, n_ctx=512, d_mlp=2048)
    mlp_plan = budget.Budget.of(mlp, torch.zeros(63, 512, dtype=torch.long))
    assert mlp_plan.term_importance_on is None
    big = ModelConfig(
        n_layers=12, n_heads=12, d_model=768, d_vocab=50257, n_ctx=1024, d_mlp=3072,
        positional="standard", normalization="layernorm", bias=True, act_fn="gelu_new",
    )  # fmt: skip
    plan = budget.Budget.of(big, torch.zeros(16, 1024, dtype=torch.long))
    assert plan.bigram_rows and plan.trigram_sources and plan.copying_columns
    assert plan.n_sequences < 16 and plan.term_importance_on and not plan.head_knockouts
    short = budget.Budget.of(big, torch.zeros(16, 128, dtype=torch.long))  # the random probe
    assert short.term_importance_on == [1, 128] and not short.head_knockouts
    assert plan.path_max_order is not None and not plan.qk_terms


def test_analyze_a_tiny_hf_folder_with_every_estimate_on(tmp_path, monkeypatch):
    """Budgets shrunk so that a tiny GPT-2 folder takes every scale path: analyze records
    the plan, the sampled parts, and still writes a report."""
    folder = tmp_path / "gpt2"
    write_gpt2_folder(folder, n_layers=2, n_heads=2, d_model=16, d_vocab=64)
    for name in ("BIGRAM_BUDGET", "TRIGRAM_BUDGET", "FORWARD_BUDGET", "PATH_BUDGET"):
        monkeypatch.setattr(budget, name, 1)
    monkeypatch.setattr(budget, "ORDER_BUDGET", 1)
    monkeypatch.setattr(budget, "QK_SIDES_LIMIT", 1)
    analysis = A.analyze(folder, log=None)
    rec = analysis["models"][0]
    plan = rec["budget"]
    assert plan["bigram_rows"] == 1 and plan["trigram_sources"] == 1
    assert plan["n_sequences"] == 1 and rec["evaluation"]["n_sequences"] == 1
    assert plan["path_max_order"] == 0 and plan["head_knockouts"] is False
    assert "qk_terms" in rec["not_computed"] and "head_knockouts" in rec["not_computed"]
    assert not [t for t in rec["term_importance"]["terms"] if t["kind"] == "head"]
    assert plan["term_importance_on"] == [1, 2]
    assert rec["term_importance"]["n_tokens"] == 1  # positions - 1 predicted
    assert len({t["source"] for h in rec["heads"] for t in h["skip_trigrams"][:1]}) >= 1
    A.write_analysis(tmp_path / "out", analysis)
    assert (tmp_path / "out" / "report.html").exists()


def _one_line(argv: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("command", ["analyze", "heads", "circuits", "sample"])
def test_missing_dir_without_download_is_one_line(command, tmp_path):
    argv = [command, str(tmp_path / "gpt2")]
    argv += ["--out", str(tmp_path / "out")] if command == "analyze" else []
    assert "gpt2" in _one_line(argv)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["analyze", "heads", "circuits", "sample"])
def test_download_without_huggingface_hub_is_one_line(command, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    argv = [command, "gpt2", "--download"]
    argv += ["--out", str(tmp_path / "out")] if command == "analyze" else []
    line = _one_line(argv)
    assert "huggingface_hub" in line and "pip install" in line


def _power_sums(z: torch.Tensor, n: int = 4) -> torch.Tensor:
    """sum(z^k) for k = 1..n: equal spectra have equal power sums, whatever the order."""
    z = z.to(torch.complex128)
    return torch.stack([(z**k).sum() for k in range(1, n + 1)])


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"bias": True, "normalization": "layernorm", "d_mlp": 32, "positional": "standard"},
        {"bias": True, "normalization": "rmsnorm", "positional": "rotary", "rotary_dim": 4},
    ],
    ids=["attn-only", "layernorm+bias", "rotary+bias"],
)
def test_qk_and_ov_eigenvalues_from_grams_equal_the_circuits_spectra(extra):
    from qkov.eigenvalues import ov_eigenvalues, qk_eigenvalues
    from qkov.model import Transformer

    torch.manual_seed(1)
    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_vocab=40, n_ctx=12, **extra)
    model = Transformer(cfg).eval().double()  # fp64: the two orders of products agree closely
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # biases and norm weights nonzero
    from qkov.circuits import folded, is_cached, token_embedding

    m = folded(model)
    for l in range(2):
        for h in range(2):
            for offset in (0, -3):
                want = _power_sums(qk_circuit(model, l, h, offset=offset).eigenvalues)
                # the head's own products (gram=False, or None before the gram is formed)
                for gram in (False, None):
                    got = _power_sums(qk_eigenvalues(model, l, h, offset=offset, gram=gram))
                    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
                    assert not is_cached(m, "embedding_grams_qk", token_embedding(m))
                got = _power_sums(qk_eigenvalues(model, l, h, offset=offset))
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
                assert is_cached(m, "embedding_grams_qk", token_embedding(m))
                # None reads a gram formed already: a zeroed one gives a zero spectrum
                m.__dict__["_qkov_circuit_cache"]["embedding_grams_qk"][1]["EE"].zero_()
                if not cfg.bias:
                    assert not qk_eigenvalues(model, l, h, offset=offset, gram=None).any()
                m.__dict__["_qkov_circuit_cache"].pop("embedding_grams_qk")
            want = _power_sums(ov_circuit(model, l, h).eigenvalues)
            got = _power_sums(ov_eigenvalues(model, l, h))
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_report_labels_the_estimates(tmp_path, monkeypatch):
    folder = tmp_path / "gpt2"
    write_gpt2_folder(folder, n_layers=1, n_heads=2, d_model=16, d_vocab=64)
    for name in ("BIGRAM_BUDGET", "TRIGRAM_BUDGET", "PATH_BUDGET"):
        monkeypatch.setattr(budget, name, 1)
    monkeypatch.setattr("qkov.heads.COPY_EXACT_BUDGET", 1)
    monkeypatch.setattr("qkov.heads.COPY_MIN_COLUMNS", 8)
    analysis = A.analyze(folder, log=None)
    assert analysis["models"][0]["budget"]["copying_columns"] is not None
    A.write_analysis(tmp_path / "out", analysis)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "seeded sample of 1 of 64 current tokens" in html
    assert "seeded sample of 1 of 64 source tokens" in html
    assert "seeded sample of 8 of 64 logits (scaled to the whole vocabulary)" in html
    assert "order&gt;0" in html


def test_circuits_cli_ranks_the_budgets_sample_and_says_so(tmp_path, monkeypatch, capsys):
    """Over the trigram budget (forced here on a tiny GPT-2 folder) `qkov circuits` ranks
    analyze's seeded sample of sources, says so, and its top-1 fraction is that of the
    sample; --exact ranks every source."""
    import json

    from qkov.checkpoint import load
    from qkov.circuits import ov_circuit
    from qkov.eigenvalues import top1_self_fraction

    folder = tmp_path / "gpt2"
    write_gpt2_folder(folder, n_layers=1, n_heads=2, d_model=16, d_vocab=64)
    monkeypatch.setattr(budget, "TRIGRAM_BUDGET", 64 * 8 * 12)  # d_head 8: 12 of 64 sources
    out = tmp_path / "c.json"
    assert main(["circuits", str(folder), "-k", "3", "--json", str(out)]) == 0
    assert "seeded sample of 12 of 64 source tokens" in capsys.readouterr().out
    model = load(folder)
    sample = sample_tokens(64, 12)
    heads = json.loads(out.read_text())["heads"]
    for h in range(2):
        want = top1_self_fraction(ov_circuit(model, 0, h), rows=sample)
        assert heads[h]["top1_fraction"] == pytest.approx(want)
        assert {t["source"] for t in heads[h]["skip_trigrams"]} <= set(sample.tolist())
    assert main(["circuits", str(folder), "-k", "3", "--exact"]) == 0
    assert "seeded sample" not in capsys.readouterr().out


def _folder_with_split_candidates(tmp_path: Path) -> Path:
    """A tiny GPT-2 folder whose tokenizer has 43 token-split candidates ("ab" = "a" + "b")."""
    folder = tmp_path / "gpt2"
    write_gpt2_folder(folder, n_layers=2, n_heads=2, d_model=16, d_vocab=300)
    byte_pair_tokenizer(300).save(str(folder / "tokenizer.json"))
    return folder


def test_analyze_samples_token_split_candidates_past_the_budget_and_says_so(tmp_path, monkeypatch):
    """A 50k tokenizer has ~10^5 token-split candidates, each ~4 d_model x d_head products
    per head (minutes per model at Pythia-410m's 384 heads): past SPLIT_BUDGET every head
    ranks the same seeded sample, exactly, and the head record and report say so."""
    from qkov.checkpoint import load
    from qkov.split_tokens import sample_candidates, split_token_candidates, split_token_trigrams
    from qkov.trigrams import allowed_tokens

    folder = _folder_with_split_candidates(tmp_path)
    monkeypatch.setattr(budget, "SPLIT_BUDGET", 16 * 8 * 10)  # d_model 16, d_head 8: 10
    analysis = A.analyze(folder, log=None)
    rec = analysis["models"][0]
    assert rec["budget"]["split_candidates"] == 10
    model = load(folder)
    candidates = split_token_candidates(model, allowed_tokens(model, None))
    assert candidates.shape[0] == 43
    sample = sample_candidates(candidates, 10)
    assert sample.shape[0] == 10 and len({tuple(r) for r in sample.tolist()}) == 10
    for h in rec["heads"]:
        split = h["split_token_trigrams"]
        assert split["n_candidates"] == 10 and split["of_candidates"] == 43
        want = split_token_trigrams(model, h["layer"], h["head"], k=8, candidates=sample)
        assert split["n_favoured"] == want.n_favoured
        assert [t["score"] for t in split["trigrams"]] == pytest.approx(
            [t.score for t in want.trigrams]
        )
    A.write_analysis(tmp_path / "out", analysis)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "over a seeded sample of 10 of 43 candidates" in html
    # Under the budget: every candidate, nothing said.
    monkeypatch.setattr(budget, "SPLIT_BUDGET", 2**29)
    exact = A.analyze(folder, log=None)["models"][0]["heads"][0]["split_token_trigrams"]
    assert exact["n_candidates"] == 43 and "of_candidates" not in exact


def test_circuits_cli_samples_token_split_candidates_past_the_budget(tmp_path, monkeypatch, capsys):
    import json

    folder = _folder_with_split_candidates(tmp_path)
    monkeypatch.setattr(budget, "SPLIT_BUDGET", 16 * 8 * 10)
    out = tmp_path / "c.json"
    assert main(["circuits", str(folder), "-k", "3", "--split-k", "2", "--json", str(out)]) == 0
    assert "seeded sample of 10 of 43 candidates" in capsys.readouterr().out
    heads = json.loads(out.read_text())["heads"]
    assert {h["split_token_trigrams"]["n_candidates"] for h in heads} == {10}
    assert main(["circuits", str(folder), "-k", "3", "--split-k", "2", "--exact"]) == 0
    assert "of 43 candidates" not in capsys.readouterr().out


def test_analyze_prints_progress_inside_the_per_head_stage(tmp_path, monkeypatch):
    """A 1B model's per-head stage takes minutes: it logs how many heads are done (here
    after every head, PROGRESS_S forced to 0; the last one is the next stage's line)."""
    folder = _folder_with_split_candidates(tmp_path)
    monkeypatch.setattr(qkov.progress, "PROGRESS_S", 0.0)
    lines: list[str] = []
    A.analyze(folder, log=lines.append)
    said = [line.split(": ", 1)[-1] for line in lines]
    progress = [x for x in said if re.fullmatch(r"\d+ of 4 heads", x)]
    assert progress == ["1 of 4 heads", "2 of 4 heads", "3 of 4 heads"]
    # The head-score stage (4.5 min at TinyLlama's shape) says which part it is in.
    assert "head scores on the repeated-token probe, composition scores, labels" in said
