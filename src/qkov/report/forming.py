"""forming.html: `qkov forming`'s records drawn, a self-contained page (the report's style,
no script, no network source): the probe's scores and the circuit's weight statistics at
each checkpoint, then the same numbers as a table."""

from __future__ import annotations

import math
from typing import Any

from qkov.report.escape import esc
from qkov.report.fmt import num, si
from qkov.report.page import _csp
from qkov.report.svg import line_chart
from qkov.report.widgets import asset

CHARTS = (  # (title, y label, {legend: record key})
    (
        "head scores (random-token probe)",
        "score",
        {
            "induction": "probe_induction_score",
            "the pinned head's induction": "probe_induction_head_score",
            "previous token": "probe_previous_token_score",
            "induction, repetition test": "repetition_induction_score",
            "2nd induction, repetition test": "repetition_second_score",
        },
    ),
    ("ICL score (random-token probe)", "nats", {"ICL score": "probe_icl_score"}),
    (
        "loss on repeated random tokens",
        "nats",
        {
            "first half": "repetition_first_half_loss",
            "repeated half": "repetition_repeated_half_loss",
            "uniform ln(d_vocab)": "repetition_uniform_loss",
        },
    ),
    (
        "the induction circuit's weights",
        "statistic",
        {
            "K-composition": "probe_k_composition",
            "QK term Σλ/Σ|λ|": "probe_qk_eigenvalue",
            "OV Σλ/Σ|λ|": "probe_ov_eigenvalue",
        },
    ),
)
COLUMNS = (  # (header, record key, signed)
    ("induction", "probe_induction_score", False),
    ("previous token", "probe_previous_token_score", False),
    ("previous-token head", "probe_previous_token_head", None),
    ("ICL (probe)", "probe_icl_score", True),
    ("induction head", "probe_induction_head", None),
    ("its score", "probe_induction_head_score", False),  # `qkov forming --head` only
    ("partner", "probe_partner_head", None),
    ("K-composition", "probe_k_composition", False),
    ("QK term Σλ/Σ|λ|", "probe_qk_eigenvalue", True),
    ("OV Σλ/Σ|λ|", "probe_ov_eigenvalue", True),
)
REPETITION_COLUMNS = (  # signed "%": a fraction, as a percentage
    ("best induction head", "repetition_induction_head", None),
    ("its score", "repetition_induction_score", False),
    ("second", "repetition_second_head", None),
    ("its score", "repetition_second_score", False),
    ("loss: first half", "repetition_first_half_loss", False),
    ("repeated half", "repetition_repeated_half_loss", False),
    ("repeated / uniform", "repetition_repeated_fraction", "%"),
)


def forming_page(rows: list[dict[str, Any]], title: str, pinned: str | None = None) -> str:
    """The page's HTML. x is the training step where every checkpoint has one, else the
    checkpoint's place in the order given. pinned: what `--head` fixed, in words (then the
    circuit is that head's, not each checkpoint's best)."""
    steps = [r.get("step") for r in rows]
    by_step = all(isinstance(s, int) and s > 0 for s in steps)
    # snapshots are spaced geometrically (a phase change comes early): over more than a
    # decade of steps, x is log10(step), labelled in steps
    log_x = by_step and max(steps) >= 10 * min(steps)
    if log_x:
        xs, x_label, x_format = [math.log10(s) for s in steps], "training step (log scale)", _pow
    elif by_step:
        xs, x_label, x_format = steps, "training step", si
    else:
        xs, x_label = list(range(1, len(rows) + 1)), "checkpoint, in the order given"
        x_format = _order
    figures = []
    for chart_title, y_label, keys in CHARTS:
        series = {
            legend: [[x, _finite(r.get(key))] for x, r in zip(xs, rows, strict=True)]
            for legend, key in keys.items()
        }
        chart = line_chart(
            series, chart_title, x_label, y_label, width=420, x_format=x_format, x_integer=not log_x
        )
        if chart:
            figures.append(f"<figure>{chart}<figcaption>{esc(chart_title)}</figcaption></figure>")
    halves = {r.get("repetition_half_len") for r in rows} - {None}
    block = f"a block of {min(halves)}" if len(halves) == 1 else "a block of 50 or n_ctx / 2"
    test = f"10 sequences of random tokens, {block} repeated once"
    n_seeds = max((r.get("repetition_seeds") or 1 for r in rows), default=1)
    if n_seeds > 1:  # `qkov forming --repetition-seeds N`
        test += f"; each score and loss the mean of {n_seeds} seeds"
    repetition = (
        f"<h3>The repetition test ({esc(test)})</h3>{_table(rows, REPETITION_COLUMNS)}"
        if halves
        else ""
    )
    whose = pinned or (
        "the best induction head and its partner (of the earlier heads above the random "
        "K-composition baseline, the previous-token heads if any, the one its keys read most)"
    )
    style = asset("report.css")
    csp = _csp(style, "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">'
        '<meta name="referrer" content="no-referrer"><link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{style}</style></head><body>"
        f'<header class="top"><h1>qkov forming</h1><p>{esc(title)}</p></header><main>'
        "<section><h2>The induction circuit at each checkpoint</h2><p>At each checkpoint, "
        "on the fixed random-token probe training logs: the best induction and previous-token "
        f"scores and the ICL score; then, for {esc(whose)}, the circuit's weight statistics: their "
        "K-composition score and Σλ/Σ|λ| of the induction QK term (token matching near +1) "
        "and of the head's OV circuit (copying near +1). Then the peers' repetition test "
        f"({esc(test)}): its two best "
        "induction heads and the loss on each half, against a uniform guess.</p>"
        f'<div class="plots">{"".join(figures)}</div>'
        f"<h3>The training probe and the circuit's weights</h3>{_table(rows, COLUMNS)}"
        f"{repetition}</section></main></body></html>\n"
    )


def _table(rows: list[dict[str, Any]], columns: tuple) -> str:
    """A row per checkpoint: its name, then `columns` ((header, record key, signed)) that
    some record has."""
    columns = tuple(c for c in columns if any(c[1] in r for r in rows))
    head = "".join(f"<th>{esc(h)}</th>" for h in ("checkpoint", *(c[0] for c in columns)))
    body = "".join(
        f"<tr><td>{esc(r.get('checkpoint'))}</td>"
        + "".join(_cell(r.get(key), signed) for _, key, signed in columns)
        + "</tr>"
        for r in rows
    )
    return f'<table class="num"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _pow(t: float) -> str:
    """A log10(step) tick as the step: 2 -> 100, 2.5 -> 316."""
    return si(round(10**t))


def _order(t: float) -> str:
    return f"{t:g}"


def _cell(value: Any, signed: bool | str | None) -> str:
    if signed is None:  # a head's name
        return f"<td>{esc(value if value is not None else '-')}</td>"
    if signed == "%":
        return f"<td>{esc('-' if _finite(value) is None else f'{value:.0%}')}</td>"
    return f"<td>{esc(num(value, 3, signed=signed))}</td>"
