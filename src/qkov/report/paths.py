"""The report's sections on paths: QK terms of each head, the virtual heads' OV circuits, the
position x position QK term of layer-0 heads, and the per-token attribution of a text.

Each takes a MODEL dict (qkov.report.schema) and returns HTML; absent data says "not
computed". Nothing here computes a number: the report only draws data."""

from __future__ import annotations

from typing import Any

from qkov.report.escape import esc, tok, visible_token
from qkov.report.fmt import num
from qkov.report.heatmaps import heatmap
from qkov.report.notes import budget, not_computed
from qkov.report.svg import hbar_chart
from qkov.report.widgets import data_block, round_matrix


def _n_layers(m: dict) -> int:
    n = (m.get("config") or {}).get("n_layers")
    return n if isinstance(n, int) else 0


def qk_terms_section(m: dict) -> str:
    """Per head: the QK term kinds (direct, Q-, K-, Q+K-composition) by size, then its
    largest terms, as bar charts (the paper's chart of which terms matter)."""
    heads = m.get("qk_terms")
    if _n_layers(m) == 0:
        return ""
    if not heads:
        return not_computed(m, "qk_terms")
    figs = []
    for h in heads:
        name = f"L{h.get('layer')}H{h.get('head')}"
        kinds = [(str(k.get("kind")), k.get("size")) for k in h.get("kinds") or []]
        terms = [(f"{t.get('name')}", t.get("size")) for t in h.get("terms") or []]
        figs.append(
            f'<figure class="qk-terms"><figcaption>{esc(name)}: term kinds, then its largest '
            f"terms (query side \u00b7 key side)</figcaption>"
            + hbar_chart(kinds, f"{name} QK term kinds", width=420)
            + hbar_chart(terms, f"{name} largest QK terms", width=420)
            + "</figure>"
        )
    on = m.get("qk_terms_measured_on") or {}
    where = (
        f"the first {on['seq_len']} tokens of {on['n_sequences']} evaluation sequences"
        if on.get("seq_len") and on.get("n_sequences")
        else "the evaluation set"
    )
    return (
        f'<p class="note">Each head\'s attention scores on {esc(where)} split exactly '
        "into terms by the path its query reads and the path its key reads (earlier "
        "patterns frozen): direct (token, position, bias, MLP output on both sides), "
        "Q-composition (earlier heads on the query side), K-composition (on the key side), "
        "or both. Size: RMS over causal (destination, source) pairs with each destination's "
        "mean removed (softmax ignores it).</p>" + f'<div class="plots">{"".join(figs)}</div>'
    )


def virtual_heads_section(m: dict) -> str:
    """Virtual heads (V-composition) by composition score with their OV Σλ/Σ|λ|."""
    rows = m.get("virtual_heads")
    if _n_layers(m) < 2:
        return ""
    if not rows:
        return not_computed(m, "virtual_heads")
    body = "".join(
        f'<tr><td>{esc(v.get("name"))}</td><td class="n">{esc(num(v.get("v_composition")))}'
        f'</td><td class="n">{esc(num(v.get("ov_eigenvalue_score"), signed=True))}</td></tr>'
        for v in rows
    )
    return (
        '<p class="note">The OV circuit W<sub>E</sub>W<sub>OV</sub><sup>h0</sup>'
        "W<sub>OV</sub><sup>h1</sup>W<sub>U</sub> of each virtual head h0\u2192h1, ranked by "
        "V-composition score; \u03a3\u03bb/\u03a3|\u03bb| near 1: the pair copies.</p>"
        '<table class="virtual-heads"><thead><tr><th>virtual head</th>'
        '<th class="n">V-composition</th><th class="n">OV \u03a3\u03bb/\u03a3|\u03bb|</th>'
        f"</tr></thead><tbody>{body}</tbody></table>"
    )


def positional_qk_section(m: dict) -> str:
    """W_pos W_QK W_pos^T / sqrt(d_head) of each layer-0 head as a heatmap."""
    maps = m.get("positional_qk")
    if _n_layers(m) == 0:
        return ""
    if not maps:
        return not_computed(m, "positional_qk")
    figs, flat = [], []
    for entry in maps:
        layer, head = (entry.get("head") or [0, 0])[:2]
        vals = entry.get("scores") or []
        n = len(vals)
        # Only the causal part is ever used: sources after the destination drawn as undefined.
        shown = [[v if j <= i else None for j, v in enumerate(row)] for i, row in enumerate(vals)]
        finite = [v for row in shown for v in row if isinstance(v, (int, float))]
        if finite and min(finite) == max(finite):
            flat.append((f"L{layer}H{head}", finite[0]))
        labels = [str(i) for i in range(n)]
        name = f"L{layer}H{head}"
        plot = heatmap(
            shown,
            labels,
            labels,
            f"{name} position x position QK",
            vmin=min(finite, default=0.0),
            vmax=max(finite, default=1.0),
            cell=14,
            annotate=False,
            title=name,
        )
        figs.append(f'<figure class="pos-qk">{plot}<figcaption>{esc(name)}</figcaption></figure>')
    return (
        '<p class="note">W<sub>pos</sub>W<sub>QK</sub>W<sub>pos</sub><sup>T</sup>/'
        "\u221ad<sub>head</sub> of each layer-0 head (rows: destination position, columns: "
        "source position): a previous_token head lights the diagonal just below the main "
        "one. Each map is coloured from its own smallest (white) to its largest value "
        "(blue); hover a cell for its value.</p>"
        + _flat_maps_note(flat, maps)
        + f'<div class="plots">{"".join(figs)}</div>'
    )


def _flat_maps_note(flat: list[tuple[str, float]], maps: list) -> str:
    """Maps whose causal entries are all one value in analysis.json (e.g. all 0.0 where the
    stored values were rounded) draw blank: say so rather than leave an empty map."""
    if not flat:
        return ""
    values = {num(v) for _, v in flat}
    value = f" ({values.pop()})" if len(values) == 1 else ""
    which = "each map" if len(flat) == len(maps) else "the map of " + ", ".join(n for n, _ in flat)
    return (
        f'<p class="note flat">Every entry of {esc(which)} has one value{esc(value)} in '
        "analysis.json, so it draws blank: no position is preferred at the precision stored.</p>"
    )


def attribution_section(m: dict, view_id: str) -> str:
    """The example text coloured by one path's contribution to each next token's logit (a
    menu picks the path); hovering a token lists the paths pushing its next token up/down."""
    att = m.get("attribution")
    if _n_layers(m) == 0 and not att:
        return ""
    if not att or not att.get("tokens") or not att.get("paths"):
        return not_computed(m, "attribution")
    tokens, paths = att["tokens"], att["paths"]
    cut = budget(m).get("path_max_order")
    cut_note = (
        f'<p class="note estimate">Paths through more than {int(cut)} heads are summed into '
        f"one exact remainder path, order&gt;{int(cut)} (max_order {int(cut)} at this size).</p>"
        if cut is not None
        else ""
    )
    data = {
        "tokens": [visible_token(t) for t in tokens],
        "predicted": [visible_token(t) for t in att.get("predicted") or []],
        "paths": [str(p) for p in paths],
        "logit": round_matrix(att.get("logit") or []),
        "contributions": round_matrix(att.get("contributions") or []),
    }
    first_head = next((i for i, p in enumerate(paths) if str(p).startswith("L")), 0)
    options = _path_options(paths, att.get("orders"), first_head, cut)
    n_pred = len(data["contributions"])
    spans = "<wbr>".join(  # the line may wrap between tokens, never inside one
        f'<span class="tok" data-i="{i}">{tok(t)}</span>'
        if i < n_pred
        else f'<span class="tok last">{tok(t)}</span>'
        for i, t in enumerate(tokens)
    )
    return (
        f'<p class="note">Tokens of {esc(att.get("text") or "the example text")}. Each '
        "token is coloured by what the chosen path adds to the logit of the token that comes "
        "next (blue: up, red: down); the paths' contributions sum exactly to that logit "
        f"(max error {esc(num(att.get('max_abs_error'), digits=6))}). Hover a token for the "
        "paths that push its next token up and down.</p>"
        + cut_note
        + data_block(view_id, data)
        + f'<div class="qkov-attrib" data-src="{esc(view_id)}"><label>path '
        f'<select>{options}</select></label><div class="tokens">{spans}</div></div>'
    )


ORDER_GROUPS = {0: "order 0: no head (direct path, biases, MLPs)", 1: "order 1: single heads"}


def _path_options(paths: list, orders: Any, selected: int, cut: Any) -> str:
    """The path menu's <option>s, in <optgroup>s by order where analysis.json records the
    orders (GPT-2 has 1,240 paths to a cut of 1: a flat list of them is hard to use)."""

    def option(i: int) -> str:
        return f'<option value="{i}"{" selected" if i == selected else ""}>{esc(paths[i])}</option>'

    if not isinstance(orders, list) or len(orders) != len(paths):
        return "".join(option(i) for i in range(len(paths)))
    groups: dict[Any, list[int]] = {}
    for i, o in enumerate(orders):
        groups.setdefault(o, []).append(i)
    out = []
    for o, idx in groups.items():
        if isinstance(cut, int) and isinstance(o, int) and o > cut:
            label = f"the remainder: every path through more than {cut} heads"
        else:
            label = ORDER_GROUPS.get(o, f"order {o}: chains of {o} heads (virtual heads)")
        out.append(f'<optgroup label="{esc(label)}">{"".join(option(i) for i in idx)}</optgroup>')
    return "".join(out)


def split_trigrams_block(m: dict, h: dict, token_table: Any, filter_text: str) -> str:
    """A head card's token-split skip-trigrams `[ab] ... [a] -> [b]`, beside its
    skip-trigrams."""
    split = h.get("split_token_trigrams")
    if not split:
        return ""
    head = (
        f"<h5>token-split skip-trigrams [ab] \u2026 [a] \u2192 [b] ({esc(filter_text)}): "
        f"{esc(split.get('n_favoured'))} of {esc(split.get('n_candidates'))} favoured</h5>"
    )
    if split.get("of_candidates"):  # qkov.budget.split_candidates: a seeded sample
        head += (
            f'<p class="note estimate">Estimate: over a seeded sample of '
            f"{esc(_thousands(split.get('n_candidates')))} of "
            f"{esc(_thousands(split['of_candidates']))} candidates.</p>"
        )
    rows = split.get("trigrams") or []
    if not rows:
        return head + '<p class="note">none in this vocabulary</p>'
    cols = [("source", "source"), ("destination", "\u2026 destination"), ("out", "\u2192 out")]
    return head + token_table(rows[:8], cols, ("score", "score"))


def _thousands(n: Any) -> Any:
    return f"{n:,}" if isinstance(n, int) else n
