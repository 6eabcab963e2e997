"""The top of the report: one card per model (config, checkpoint, the evaluation-set loss
and ICL score with what they rest on) and the models' losses side by side."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from qkov.config import TrainConfig, acting_fields
from qkov.report.escape import esc
from qkov.report.fmt import count, num, stderr_text
from qkov.report.svg import hbar_chart

RMS_NOTE = (
    '<p class="note">RMS-normalised: token circuits read each W<sub>E</sub> row over its RMS, '
    "as layer 0 does; the per-position scales of later layers and of the unembedding are "
    "frozen in the path terms and left out of the token circuits (a positive factor per "
    "position).</p>"
)


FOLDED_NOTE = (
    '<p class="note folded">{norm}: the circuits read the folded model (qkov.fold): the '
    "norm's {what}, leaving a weightless RMS divide per position, frozen in the path terms and "
    "left out of the token circuits.</p>"
)
FOLDED_WHAT = {  # what each learned norm's fold does
    "layernorm": "learned weight and bias are folded into the matrices that read it and the "
    "writes centred",
    "rmsnorm": "learned weight is folded into the matrices that read it",
}
MLP_NOTE = (
    '<p class="note mlp">MLPs: the token circuits (bigrams, OV and QK eigenvalues, '
    "skip-trigrams) read the token embedding, not what the MLPs make of it; in term "
    "importance each MLP's output starts paths of its own (order 0).</p>"
)


def config_notes(cfg: dict) -> str:
    """What the config changes about how to read the analyses (fixed HTML text)."""
    norm = cfg.get("normalization")
    notes = RMS_NOTE if norm == "rms" else ""
    if norm in ("layernorm", "rmsnorm"):
        name = "LayerNorm" if norm == "layernorm" else "RMSNorm"
        notes = FOLDED_NOTE.format(norm=name, what=FOLDED_WHAT[norm])
    return notes + (MLP_NOTE if cfg.get("d_mlp") else "")


def model_id(index: int) -> str:
    return f"m{index}"


def _row(name: str, value_html: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}><th>{esc(name)}</th><td>{value_html}</td></tr>"


def evaluation_text(m: dict) -> str:
    """What the evaluation set is, in words: description and size (plain text)."""
    ev = m.get("evaluation") or {}
    if not ev:
        return "evaluation set not recorded"
    what = ev.get("description") or "evaluation set"
    size = f"{count(ev.get('n_sequences'))} sequences of {count(ev.get('seq_len'))} tokens"
    if ev.get("kind") == "random_tokens" and not what.startswith("random tokens"):
        size = "random tokens; " + size  # a text's description says what it is
    # one parenthesis: "... (the induction probe, seed 0; 16 sequences of 128 tokens)"
    return f"{what[:-1]}; {size})" if what.endswith(")") else f"{what} ({size})"


def loss_text(m: dict) -> str | None:
    """'2.430 nats/token on 512 predicted tokens' or None when not computed."""
    loss = m.get("loss") or {}
    if loss.get("value") is None:
        return None
    return f"{num(loss['value'])} nats/token on {count(loss.get('n_tokens'))} predicted tokens"


def icl_text(icl: dict | None) -> str | None:
    """'-0.512 ± 0.041 nats (mean loss on tokens 55–63 minus on tokens 40–49; 8 sequences)':
    the windows are [start, stop) ranges of predicted-token indices."""
    if not icl or icl.get("score") is None:
        return None
    early, late = icl.get("early") or ["?", "?"], icl.get("late") or ["?", "?"]

    def tokens(w: list) -> str:
        return f"{w[0]}\u2013{w[1] - 1}" if all(isinstance(x, int) for x in w) else "?"

    return (
        f"{num(icl['score'], signed=True)}{stderr_text(icl.get('stderr'))} nats (mean loss on "
        f"tokens {tokens(late)} minus on tokens {tokens(early)}; "
        f"{count(icl.get('n_sequences'))} sequence{'s' * (icl.get('n_sequences') != 1)})"
    )


def _card_rows(m: dict) -> str:
    cfg = m.get("config") or {}
    # a nested value (a checkpoint's rotary_scaling) as analysis.json spells it; only the
    # fields that act on this model (no rotary options where positions do not rotate)
    shown = {
        k: json.dumps(v) if isinstance(v, (dict, list)) else v
        for k, v in acting_fields(cfg).items()
    }
    rows = "".join(_row(str(k), esc(v)) for k, v in shown.items())
    if m.get("n_params") is not None:
        rows += _row("parameters", esc(count(m["n_params"])))
    if (m.get("tokenizer") or {}).get("vocab_size") is not None:
        rows += _row("tokenizer vocab", esc(count(m["tokenizer"]["vocab_size"])))
    if m.get("checkpoint"):
        rows += _row("checkpoint", f"<code>{esc(m['checkpoint'])}</code>")
    trained = TrainConfig.recorded(m.get("trained"))
    if trained is not None and isinstance(cfg.get("n_ctx"), int):
        rows += _row("trained", esc(trained.recipe(cfg["n_ctx"])))
    rows += _row("evaluation set", esc(evaluation_text(m)), "eval")
    loss = loss_text(m)
    rows += _row("loss", esc(loss) if loss else "not computed", "loss")
    icl = icl_text(m.get("icl"))
    if icl or (cfg.get("n_layers") or 0) > 0:
        rows += _row("ICL score (evaluation set)", esc(icl) if icl else "not computed", "icl")
    if m.get("probe_icl_score") is not None:
        probe = f"{num(m['probe_icl_score'], signed=True)} nats (random-token training probe)"
        rows += _row("probe ICL score", esc(probe), "probe-icl")
    return rows


def model_cards(models: Sequence[dict]) -> str:
    """One card per model: config, checkpoint, and its evaluation-set numbers."""
    cards = []
    for i, m in enumerate(models):
        note = config_notes(m.get("config") or {})
        cards.append(
            f'<div class="card model-card"><h3><a href="#{model_id(i)}">'
            f"{esc(m.get('name') or f'model {i}')}</a></h3>"
            f"<table>{_card_rows(m)}</table>{note}</div>"
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def loss_comparison(models: Sequence[dict]) -> str:
    """Loss of the models side by side (0 > 1 > 2 layers is the paper's story), each on
    its own evaluation set, named below the chart."""
    items = [
        (str(m.get("name") or i), (m.get("loss") or {}).get("value")) for i, m in enumerate(models)
    ]
    if all(v is None for _, v in items):
        return '<p class="nc">Not computed: no model has an evaluation loss.</p>'
    on: dict[str, list[str]] = {}
    for name, m in zip((n for n, _ in items), models, strict=True):
        on.setdefault(evaluation_text(m), []).append(name)
    note = "; ".join(f"{', '.join(names)}: {what}" for what, names in on.items())
    return hbar_chart(items, "loss per model (nats per token)", " nats") + (
        f'<p class="note">Measured on: {esc(note)}.</p>'
    )


def token_filter_text(tf: Any) -> str:
    """'tokens seen ≥ 5 times in training; 3,012 of 4,096 tokens' (or: all tokens)."""
    if not isinstance(tf, dict) or tf.get("min_count") is None:
        return "all tokens ranked"
    return (
        f"tokens seen \u2265 {count(tf['min_count'])} times in training; "
        f"{count(tf.get('n_kept'))} of {count(tf.get('n_tokens'))} tokens"
    )
