"""How result records print in a REPL (their `__repr__`, qkov.reprs): short, shapes as named
axes, the key numbers rounded, never a tensor's values; and never an exception, on a 0-layer
model, an MLP model, a rotary one, a record with no labelled heads or with NaN.

One file for every record rather than one per module: the checks are the same for all of
them (`check`), and so are the models they are built on (the shipped attn2, fast to load,
and the tiny factories). Each record's old repr (the dataclass-generated one, rebuilt by
`generated_repr`) is shown to fail the same check."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

import qkov
from factories import circuit_model, general_model, induction_model, random_model
from qkov.ablation import term_importance
from qkov.attribution import attribute
from qkov.circuits import final_norm_scale, qk_positional_terms
from qkov.classification import HeadClassification, Thresholds, classify_heads
from qkov.data.evaluation import evaluation_set, random_tokens
from qkov.heads import HeadScores, head_scores
from qkov.icl import icl_from_logits, icl_score
from qkov.interop.transformer_lens_convert import Converted
from qkov.names import LABELS, SCORE_NAMES
from qkov.notebook import AttentionPatterns, attention
from qkov.repetition import repetition_test
from qkov.virtual_heads import virtual_head_ov

LONG_FLOAT = re.compile(r"\d\.\d{5,}")  # a float printed whole: 3.874301708221435
LINE = 100  # the longest line a repr may print


def generated_repr(x: object) -> str:
    """The repr `@dataclass` generates (fields with repr=True, nested records alike): what
    these records printed before they had their own."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        fields = [f for f in dataclasses.fields(x) if f.repr]
        inner = ", ".join(f"{f.name}={generated_repr(getattr(x, f.name))}" for f in fields)
        return f"{type(x).__qualname__}({inner})"
    if isinstance(x, tuple | list):
        inner = ", ".join(generated_repr(v) for v in x)
        return f"({inner}{',' * (len(x) == 1)})" if isinstance(x, tuple) else f"[{inner}]"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {generated_repr(v)}" for k, v in x.items()) + "}"
    return repr(x)


def passes(text: str, max_chars: int, max_lines: int) -> bool:
    lines = text.split("\n")
    return (
        len(text) <= max_chars
        and len(lines) <= max_lines
        and all(len(line) <= LINE for line in lines)
        and not LONG_FLOAT.search(text)
        and "tensor([" not in text  # a tensor's values
    )


def check(record: object, max_chars: int, max_lines: int = 1, old_fails: bool = True) -> str:
    """The record's repr: within max_chars and max_lines, no line over LINE, no float
    printed whole, no tensor values; the generated repr fails that (old_fails)."""
    text = repr(record)
    assert passes(text, max_chars, max_lines), text
    if old_fails:
        assert not passes(generated_repr(record), max_chars, max_lines)
    return text


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def attn2():
    return qkov.load(qkov.shipped("attn2"))


@pytest.fixture(scope="module")
def induction():
    """classify_heads of the planted 2-layer induction circuit: L0H0 previous-token, L1H0
    induction with partner L0H0 (2 s; the shipped attn2's takes 30)."""
    return classify_heads(induction_model())


def classification_line(r) -> str:
    line = f"{r.name} {r.label} {r.scores[r.decided_by]:.3f}"
    if r.label == "induction" and r.partners:
        line += f" (partner {r.partners[0].name}, z={r.partners[0].z:.1f})"
    return line


# ---------------------------------------------------------------------------- heads.py
def test_head_classification_lists_labelled_heads_and_counts_the_rest(induction):
    text = check(induction, 600, 8)
    labelled = [r for r in induction.records if r.label != "other"]
    assert labelled and any(r.label == "induction" and r.partners for r in labelled)
    lines = [line.strip() for line in text.removesuffix(")").split("\n")]
    for r in labelled:
        assert classification_line(r) in lines
    n_other = len(induction.with_label("other"))
    assert (f"{n_other} other" in text) == (n_other > 0)
    assert text.startswith(f"HeadClassification({len(induction.records)} heads [layer=2, head=2]")


def test_head_classification_of_144_heads_is_capped_per_label(induction):
    """GPT-2 small's size: 12 x 12 heads, all labelled; each label lists 5 and counts the
    rest, so the repr stays ~35 lines whatever the model."""
    template = induction.record(1, 0)
    records = []
    for i in range(144):
        label = LABELS[i % len(LABELS)]
        key = None if label == "other" else label
        scores = {n: 0.5 + i / 1000 for n in SCORE_NAMES}
        records.append(
            dataclasses.replace(
                template, layer=i // 12, head=i % 12, label=label, decided_by=key, scores=scores
            )
        )
    s = induction.scores
    big = dataclasses.replace(s, **{n: torch.rand(12, 12) for n in SCORE_NAMES})
    hc = HeadClassification(tuple(records), big, induction.thresholds)
    text = check(hc, 3000, 35)
    assert "[layer=12, head=12]" in text
    for label in LABELS[:-1]:
        group = sorted(hc.with_label(label), key=lambda r: -r.scores[label])
        assert f"... and {len(group) - 5} more {label}" in text
        assert f"  {classification_line(group[0])}" in text
        assert f"  {classification_line(group[5])}" not in text
    assert f"{len(hc.with_label('other'))} other" in text


def test_head_scores_give_each_score_best_head(induction):
    s = induction.scores
    text = check(s, 400, 4)
    assert f"on {s.n_sequences} x {s.seq_len} random tokens" in text
    for name in SCORE_NAMES:
        score, l, h = s.best(name)
        assert f"{name} {score:.3f} (L{l}H{h})" in text


def test_head_record_shows_label_partners_and_knockout(induction):
    r = induction.record(1, 0)
    assert r.label == "induction" and r.knockout
    text = check(r, 600, 6)
    assert text.startswith(
        f"HeadRecord({classification_line(r)}, OV eig {r.ov_eigenvalue_score:+.3f}"
    )
    assert f"induct {r.scores['induction']:.3f}" in text
    assert (
        f"knocking out {r.knockout[0].name} lowers its induction score by {r.knockout[0].drop:.2f}"
        in text
    )
    p = r.k_composition[0]
    assert f"{p.name} ({p.score:.3f}, z={p.z:.1f})" in text
    assert f"QK term eig {r.qk_term_eigenvalue_score:+.3f}" in text
    check(r.k_composition[0], 80, old_fails=False)
    check(r.knockout[0], 80)


def test_head_records_on_the_shipped_model_are_short(attn2):
    """attn2's scores without the classification's 30 s: a real induction head's record
    prints in 6 lines (its generated repr: ~2,000 characters)."""
    scores = head_scores(attn2, batch=2, seq_len=64, copying=False)
    text = check(scores, 400, 4)
    assert "copying nan" in text  # copying=False: NaN for every head
    s, l, h = scores.best("induction")
    assert f"induction {s:.3f} (L{l}H{h})" in text


# ---------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize(
    "model",
    [
        random_model(0),
        random_model(1, "rotary"),
        general_model(1),  # MLPs, biases, layernorm
    ],
    ids=["0-layer", "rotary", "mlp"],
)
def test_head_reprs_never_raise(model):
    nothing = Thresholds(previous_token=2, induction=2, duplicate_token=2, copying=2, positional=2)
    hc = classify_heads(model, batch=2, n_baseline=4, thresholds=nothing)
    text = check(hc, 400, 4, old_fails=model.cfg.n_layers > 0)
    assert "labels: " + (f"{len(hc.records)} other" if hc.records else "none") in text
    check(hc.scores, 400, 4, old_fails=False)
    for r in hc.records:
        check(r, 400, 4)
        nan = dataclasses.replace(
            r, scores=dict.fromkeys(SCORE_NAMES, math.nan), ov_eigenvalue_score=math.nan
        )
        assert "OV eig nan" in check(nan, 400, 4, old_fails=False)


def test_head_scores_of_no_heads():
    empty = {n: torch.zeros(0, 4) for n in SCORE_NAMES}
    text = check(HeadScores(**empty, measured_on="tokens", n_sequences=1, seq_len=3), 200, 2)
    assert "[layer=0, head=4]" in text and "best: no heads" in text


# ---------------------------------------------------------------------------- ablation.py
def test_icl_result_reads_as_one_line(attn2):
    ev = evaluation_set(attn2, qkov.shipped("attn2"))
    r = icl_score(attn2, ev.tokens[:8])
    text = check(r, 120)
    (a, b), (c, d) = r.early, r.late
    assert text == (
        f"IclResult(score={r.score:+.3f} \u00b1 {r.stderr:.3f} over {r.n_sequences} sequences, "
        f"loss {r.loss_early:.3f} at tokens {a}-{b - 1} -> {r.loss_late:.3f} at {c}-{d - 1})"
    )


def test_icl_result_of_one_sequence_has_no_stderr():
    g = torch.Generator().manual_seed(0)
    r = icl_from_logits(torch.randn(1, 3, 5, generator=g), torch.tensor([[1, 2, 3]]))
    assert math.isnan(r.stderr)
    text = check(r, 120)
    assert "\u00b1" not in text and "over 1 sequence," in text and "at tokens 1 -> " in text


def test_term_importance_lists_orders_and_the_costliest_heads():
    model = random_model(2, n_heads=4)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    ti = term_importance(model, tokens)
    text = check(ti, 600, 5)
    assert f"clean loss {ti.clean_loss:.3f} on {ti.n_tokens} predicted tokens" in text
    for o in ti.orders:
        assert f"{o.delta:+.3f}" in text
    worst = sorted(ti.heads, key=lambda h: -h.zero_delta)
    assert f"{worst[0].name} {worst[0].zero_delta:+.3f}" in text
    assert f"... and {len(ti.heads) - 5} more" in text
    o, h = ti.orders[1], ti.heads[0]
    assert check(o, 80) == (
        f"OrderAblation(order 1, {o.n_terms} terms: loss {o.loss:.3f}, delta {o.delta:+.3f})"
    )
    assert check(h, 100) == (
        f"HeadAblation({h.name}: zero loss {h.zero_loss:.3f} ({h.zero_delta:+.3f}), "
        f"mean loss {h.mean_loss:.3f} ({h.mean_delta:+.3f}))"
    )


def test_term_importance_of_mlp_and_0_layer_models():
    model = general_model(2)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    ti = term_importance(model, tokens, mean_knockouts=False)  # mean fields NaN
    text = check(ti, 600, 6)
    assert "0 direct path, biases, MLPs" in text and "MLPs knocked out (zero)" in text
    m = ti.mlps[0]
    assert check(m, 120).startswith(f"MlpAblation(MLP0: zero loss {m.zero_loss:.3f}")
    assert "mean loss nan (nan)" in check(ti.heads[0], 100)
    check(term_importance(random_model(0), tokens), 200, 3, old_fails=False)


# ---------------------------------------------------------------------------- repetition.py
def test_repetition_test_gives_losses_top_heads_and_writers(attn2):
    r = repetition_test(attn2, batch=2, half_len=20)
    text = check(r, 700, 6)  # the shipped model has token counts: one or two lines more
    bins = [f"{b.label} {b.loss:.2f} ({b.predictions})" for b in r.by_training_count]
    assert "repeated-half loss by training count: " + bins[0] in text
    assert all(b in text for b in bins)
    assert f"loss {r.first_half_loss:.3f} on the first half -> {r.repeated_half_loss:.3f}" in text
    assert "induction_scores tensor[layer=2, head=8] float32" in text
    for l, h, s in r.top_heads(3):
        assert f"L{l}H{h} {s:.3f}" in text
    t = r.repeated_token_logit
    name, push = t.top(1)[0]
    assert f"{name} {push:+.2f}" in text
    writers = check(t, 300, 3)
    assert f"logit {t.logit:+.3f}" in writers and f"{name} {push:+.3f}" in writers
    assert f"... and {len(t.writers) - 5} more" in writers


@pytest.mark.parametrize("model", [random_model(0), general_model(1)], ids=["0-layer", "mlp"])
def test_repetition_test_edge_models(model):
    r = repetition_test(model, batch=2, half_len=5)
    text = check(r, 500, 4, old_fails=False)
    assert ("top -" in text) == (model.cfg.n_layers == 0)
    check(r.repeated_token_logit, 300, 3, old_fails=False)


# ---------------------------------------------------------------------------- attribution.py
@pytest.mark.parametrize(
    "model", [random_model(0), random_model(1, "rotary"), general_model(2)],
    ids=["0-layer", "rotary", "mlp"],
)  # fmt: skip
def test_attribution_edge_models(model):
    tokens = torch.arange(6) % model.cfg.d_vocab
    a = attribute(model, tokens)
    text = check(a, 500, 5, old_fails=False)
    assert f"contributions tensor[pos=5, path={len(a.paths)}] float32" in text
    check(a.by_head(), 500, 5, old_fails=False)


def test_attribution_on_the_shipped_model(attn2):
    ev = evaluation_set(attn2, qkov.shipped("attn2"))
    a = attribute(attn2, ev.tokens[0, :24])
    text = check(a, 500, 5)
    hits = int((a.predicted == a.tokens[1:]).sum())
    assert f"predicted at {hits} of 23 positions" in text
    assert f"max_abs_error {a.max_abs_error():.1e}" in text
    size = a.contributions.abs().mean(0)
    top = int(size.argmax())
    assert f"|contribution|: {a.paths[top]} {float(size[top]):.2f}" in text


# ---------------------------------------------------------------------------- evaluation.py
def test_evaluation_set_shows_shape_not_tokens(attn2):
    ev = evaluation_set(attn2, qkov.shipped("attn2"))
    n, pos = ev.tokens.shape
    text = check(ev, 300, 3)
    assert f"tokens tensor[sequence={n}, pos={pos}] int64, {ev.n_tokens} predicted" in text
    assert text.startswith(f"EvaluationSet({ev.kind}: {ev.description};")
    probe = random_tokens(40, 12, n_sequences=2)
    assert "EvaluationSet(random_tokens: " in check(probe, 300, 3)


# ---------------------------------------------------------------------------- circuits.py
def test_circuit_records(attn2):
    terms = qk_positional_terms(attn2, 1, 0)
    text = check(terms, 400, 5, old_fails=False)  # FactoredMatrix printed its shape already
    for name, fm in vars(terms).items():
        assert f"{name} [" in text and f"] {float(fm.norm()):.3g}" in text
    assert "token_pos [d_vocab=2048, n_ctx=512]" in text
    check(qk_positional_terms(circuit_model(positional="standard"), 0, 1), 400, 5, False)

    model = general_model(2)
    scale = final_norm_scale(model, torch.arange(8)[None] % model.cfg.d_vocab)
    assert check(scale, 100) == (
        f"FinalScale(median {scale.median:.3f}, p10-p90 {scale.p10:.3f}-{scale.p90:.3f} "
        f"over {scale.n_positions} positions)"
    )
    v = virtual_head_ov(attn2)[0]
    assert check(v, 100) == (
        f"VirtualHeadOV({v.name}, v_composition={v.v_composition:.3f}, "
        f"eigenvalue_score={v.eigenvalue_score:+.3f})"
    )


# ---------------------------------------------------------------------------- notebook, interop
def test_attention_patterns():
    pats = attention(random_model(2), torch.arange(5))
    text = check(pats, 200, 2)
    assert "5 tokens,\n  pattern tensor[layer=2, head=3, dest=5, src=5] float32)" in text
    # attention() refuses a 0-layer model (torch.stack of no patterns); the record prints
    empty = AttentionPatterns(pats.tokens, torch.zeros(0, 3, 5, 5))
    assert "pattern tensor[layer=0, head=3, dest=5, src=5]" in check(empty, 200, 2)


def test_converted():
    model = general_model(1)
    c = Converted(model.cfg, model.weights(), exact=False, notes=["b_U dropped"])
    text = check(c, 200, 2)
    assert f"{len(c.weights)} weights, not exact" in text and "1 note (.notes)" in text


def test_largest_keeps_the_k_largest_pushes_and_sums_the_rest():
    from qkov.reprs import largest

    values = {"a": 0.5, "b": -3.0, "c": 2.0, "d": 0.25, "e": -0.125}
    shown = largest(values, 2)
    assert shown == [("b", -3.0), ("c", 2.0), ("the other 3", 0.625)]
    assert sum(v for _, v in shown) == sum(values.values())  # still the whole
    assert (
        largest(values, 5)
        == largest(values, 9)
        == sorted(values.items(), key=lambda kv: -abs(kv[1]))
    )
