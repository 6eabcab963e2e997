"""A hand-written analysis dict in schema version 2 (qkov/report/schema.py), with known
numbers to look for in the rendered report and hostile token strings to keep inert.

Three models in the demo's order: a 2-layer model with a phase change and an induction
circuit, a 0-layer model and a 1-layer model (neither with a phase change); then a 2-layer
model with MLPs, biases and layernorm, whose term importance has MLP knock-outs."""

from __future__ import annotations

import copy

from qkov.names import SCORE_NAMES

HOSTILE = [
    "<script>window.__pwned=1</script>",
    '"><img src=x onerror="window.__pwned=2">',
    "</script><script>window.__pwned=3</script>",
    "<!--",
    "&amp;",
    "\u2028",
    "'onmouseover='window.__pwned=4",
]
LONG_TOKEN = "    return self.__dict__"  # must never wrap inside a table cell

EVALUATION = {
    "description": "held-out documents of --corpus stdlib",
    "kind": "text",
    "n_sequences": 8,
    "seq_len": 65,
    "n_tokens": 512,
}
SCORES = SCORE_NAMES


def _scores(*values: float | None) -> dict[str, float | None]:
    return dict(zip(SCORES, values, strict=True))


def _head(layer: int, head: int, label: str, scores: dict, text_scores: dict | None, ov: float):
    decided = None if label == "other" else label
    return {
        "layer": layer,
        "head": head,
        "label": label,
        "decided_by": decided,
        "threshold": None if decided is None else 0.4,
        "scores": scores,
        "text_scores": text_scores,
        "ov_eigenvalue_score": ov,
        "ov_eigenvalues": [[1.5, 0.5], [1.5, -0.5], [-0.25, 0.0]],
        "qk_eigenvalues": [[0.75, 0.0], [-0.1, 0.2]],
        "skip_trigrams": [
            {"source": HOSTILE[0], "destination": LONG_TOKEN, "out": HOSTILE[1], "score": 3.25},
            {"source": " ", "destination": "\n", "out": "\t", "score": 0.000685},
        ],
        "split_token_trigrams": {
            "n_candidates": 12,
            "n_favoured": 5,
            "trigrams": [
                {"source": " Ralph", "destination": " R", "out": "alph", "score": 1.625},
                {"source": HOSTILE[2], "destination": "</script>", "out": HOSTILE[3], "score": 0.5},
            ],
        },
    }


def _attention(n_layers: int, tokens: list[str]) -> dict:
    n = len(tokens)
    # uniform causal attention: row i spreads 1 / (i + 1) over sources 0..i
    pattern = [[1 / (i + 1) if j <= i else 0.0 for j in range(n)] for i in range(n)]
    return {
        "tokens": tokens,
        "patterns": [[pattern, pattern] for _ in range(n_layers)],
        "text": "example text (repeated Python snippet)",
    }


def _training(with_bump: bool) -> dict:
    tokens = [0, 4e6, 8e6, 12e6, 16e6, 24e6, 32e6]
    train = [10.8, 5.0, 3.1, 2.9, 2.6, 2.5, 2.4]
    series = {
        "train_loss": [[t, v] for t, v in zip(tokens, train, strict=True)],
        "val_loss": [[t, v + 0.05] for t, v in zip(tokens[1:], train[1:], strict=True)],
        "probe_induction_score": [[t, 0.9 * (t >= 16e6) + 0.01] for t in tokens],
        "probe_previous_token_score": [[t, 0.5] for t in tokens],
        "probe_icl_score": [[t, -1.2 * (t >= 16e6) if with_bump else -0.1] for t in tokens],
    }
    if with_bump:  # the repetition test logged by the training probe (qkov.training_probe)
        series |= {
            "repetition_first_half_loss": [[t, 6.0] for t in tokens],
            "repetition_repeated_half_loss": [[t, 6.0 - 3 * (t >= 16e6)] for t in tokens],
            "repetition_uniform_loss": [[t, 4.16] for t in tokens],
            "repetition_induction_score": [[t, 0.85 * (t >= 16e6) + 0.02] for t in tokens],
        }
    return {
        "series": series,
        "last_val_loss": {"value": 2.45, "step": 900, "tokens": 32e6},
    }


def _model(name: str, n_layers: int) -> dict:
    m = {
        "name": name,
        "checkpoint": f"runs/{name}",
        "config": {
            "n_layers": n_layers,
            "n_heads": 2,
            "d_model": 32,
            "d_head": 16,
            "n_ctx": 64,
            "d_vocab": 64,
            "normalization": "rms",
        },
        "n_params": 12_345,
        "tokenizer": {"vocab_size": 64},
        "evaluation": dict(EVALUATION),
        "loss": {"value": 4.1 - n_layers * 0.8, "n_tokens": 512},
        "icl": None,
        "probe_icl_score": None,
        "bigrams": [
            {"current": HOSTILE[0], "out": "w1", "logit": 2.0},
            {"current": " ", "out": "\n", "logit": 0.000685},
        ],
        "token_filter": {"min_count": 5, "n_kept": 3012, "n_tokens": 4096},
        "heads": [],
        "attention": None,
        "composition": None,
        "induction_circuits": None,
        "term_importance": None,
        "training": _training(with_bump=n_layers == 2),
        "phase_change": None,
        "not_computed": {},
    }
    if n_layers:
        m["attention"] = _attention(n_layers, HOSTILE + ["w1", LONG_TOKEN])
        m["icl"] = {
            "score": -0.2,
            "stderr": 0.05,
            "early": [40, 50],
            "late": [55, 64],
            "n_sequences": 8,
        }
        m["probe_icl_score"] = -0.3
        m["heads"] = [
            _head(
                0,
                0,
                "previous_token",
                _scores(0.91, 0.02, 0.02, 0.01, 0.1, 0.3),
                _scores(0.88, 0.03, 0.03, 0.02, 0.12, 0.25),
                0.125,
            ),
            _head(0, 1, "other", _scores(0.1, 0.05, 0.05, 0.1, 0.2, 0.1), None, -0.5),
        ]
    return m


def v2_analysis() -> dict:
    """A fresh copy each call (tests may mutate it)."""
    m2, m0, m1 = _model("attn2", 2), _model("attn0", 0), _model("attn1", 1)
    m2["icl"] = {
        "score": -0.51234,
        "stderr": 0.0412,
        "early": [40, 50],
        "late": [55, 64],
        "n_sequences": 8,
    }
    m2["probe_icl_score"] = -1.234
    m2["heads"] += [
        # on the probe prefix_matching == induction; on text they differ from the probe
        _head(
            1,
            0,
            "induction",
            _scores(0.05, 0.62, 0.62, 0.01, 0.3, 0.1),
            _scores(0.04, 0.4321, 0.4321, 0.02, 0.25, 0.1),
            0.98123,
        ),
        _head(1, 1, "copying", _scores(0.01, 0.02, 0.02, 0.05, 0.7, 0.1), None, 0.75),
    ]
    null = None
    m2["composition"] = {
        kind: [
            [[[null, null], [0.1 + s, 0.2 + s]] for s in (0.0, 0.3)],
            [[[null, null], [null, null]] for _ in range(2)],
        ]
        for kind, s in (("q", 0.0), ("k", 0.0), ("v", 0.0))
    }
    m2["composition"]["k"][0][0][1][0] = 0.31  # L0H0 -> L1H0: the induction circuit
    m2["composition"]["baseline"] = {"q": 0.05, "k": 0.05, "v": 0.05}
    m2["composition"]["baseline_std"] = {"q": 0.01, "k": 0.01, "v": 0.01}
    m2["induction_circuits"] = [
        {
            "partner_head": [0, 0],
            "induction_head": [1, 0],
            "k_composition": 0.31,
            "k_composition_z": 35.2,
            "partner_label": "previous_token",
            "previous_token_score": 0.91,
            "induction_score": 0.62,
            "qk_term_eigenvalue_score": 0.98,
        }
    ]
    m2["repetition"] = {
        "batch": 10,
        "half_len": 50,
        "seed": 0,
        "induction_scores": [[0.01, 0.0], [0.87, 0.12]],
        "first_half_loss": 12.85,
        "repeated_half_loss": 5.56,
        "uniform_loss": 7.625,
        "repeated_fraction": 5.56 / 7.625,
        "repeated_token_logit": {
            "logit": 7.23,
            "log_sum_exp": 12.79,
            "writers": {"embed": 0.02, "L0H0": 0.04, "L0H1": -0.03, "L1H0": 7.1, "L1H1": 0.1},
            "rival_logit": 11.04,
            "rival_writers": {"embed": 0.5, "L0H0": 8.2, "L0H1": 1.9, "L1H0": 0.3, "L1H1": 0.14},
            "loss_without": {"embed": 5.5, "attn0": 2.7, "attn1": 10.9},
        },
        "by_training_count": [  # 10 x 49 predictions, averaging 5.56
            {
                "count_from": 0,
                "count_below": 1,
                "predictions": 40,
                "loss": 19.06,
                "first_logit": -7.2,
                "repeated_logit": -6.7,
                "lift": 0.5,
                "label": "never",
            },
            {
                "count_from": 1000,
                "count_below": 10000,
                "predictions": 450,
                "loss": 4.36,
                "first_logit": 0.8,
                "repeated_logit": 8.2,
                "lift": 7.4,
                "label": "1,000-9,999",
            },
        ],
    }
    m2["term_importance"] = {
        "clean_loss": 2.5,
        "mode": "zero",
        "n_tokens": 512,
        "terms": [
            {"term": "order 0", "kind": "order", "order": 0, "loss_increase": 3.0},
            {"term": "order 1", "kind": "order", "order": 1, "loss_increase": 0.5},
            {"term": "order 2", "kind": "order", "order": 2, "loss_increase": 0.000685},
            {"term": "L1H0", "kind": "head", "order": 2, "loss_increase": 0.2},
        ],
    }
    m2["phase_change"] = {"tokens": [12e6, 16e6]}
    m2.update(path_sections())
    return copy.deepcopy(
        {"schema_version": 2, "generator": "qkov test", "models": [m2, m0, m1, _mlp_model(m2)]}
    )


ATTRIBUTION_TOKENS = ["def", " total", " =", HOSTILE[0], HOSTILE[1], " total", " ="]


def path_sections() -> dict:
    """The sections on paths: QK terms, virtual heads' OV, positional QK, attribution (with
    hostile tokens in the text)."""
    n = len(ATTRIBUTION_TOKENS)
    paths = ["direct", "L0H0", "L0H1", "L1H0", "L1H1", "L0H0>L1H0"]
    contributions = [[0.5, 0.25, -0.125, 0.0, 0.0625, 0.0] for _ in range(n - 1)]
    contributions[5] = [1.0, -0.75, 0.125, 6.5, 0.25, 0.5]  # " total" -> " =": L1H0 on top
    return {
        "qk_terms": [
            {
                "layer": 1,
                "head": 0,
                "kinds": [
                    {"kind": "K-composition", "size": 2.75},
                    {"kind": "direct", "size": 0.5},
                ],
                "terms": [
                    {"name": "token \u00b7 L0H0", "kind": "K-composition", "size": 2.5},
                    {"name": "pos \u00b7 pos", "kind": "direct", "size": 0.375},
                ],
                "n_terms": 36,
                "max_abs_error": 1e-6,
            }
        ],
        "virtual_heads": [
            {
                "heads": [[0, 1], [1, 1]],
                "name": "L0H1>L1H1",
                "v_composition": 0.4375,
                "ov_eigenvalue_score": 0.8125,
            },
            {
                "heads": [[0, 0], [1, 0]],
                "name": "L0H0>L1H0",
                "v_composition": 0.1875,
                "ov_eigenvalue_score": -0.3125,
            },
        ],
        "positional_qk": [
            {
                "head": [0, h],
                "scores": [[float(i - j == 1 + h) for j in range(6)] for i in range(6)],
            }
            for h in range(2)
        ],
        "attribution": {
            "text": "example text",
            "tokens": ATTRIBUTION_TOKENS,
            "predicted": [
                " x",
                " =",
                HOSTILE[2],
                " y",
                " total",
                " =",
            ],
            "paths": paths,
            "logit": [sum(row) for row in contributions],
            "contributions": contributions,
            "max_abs_error": 2e-6,
        },
    }


def _mlp_model(m2: dict) -> dict:
    """The 2-layer model's heads and induction circuit in a model with MLPs, biases and
    layernorm: knock-outs of heads and MLPs in layer-major order, as analyze writes them."""
    m = copy.deepcopy(m2)
    m["name"], m["checkpoint"] = "mlp2", "runs/mlp2"
    m["config"] |= {
        "normalization": "layernorm",
        "positional": "standard",
        "d_mlp": 128,
        "act_fn": "gelu_new",
        "bias": True,
    }
    terms = [
        ("order 0: direct path, biases, MLPs", "order", 0, 4.5),
        ("order 1: single heads (4)", "order", 1, 0.75),
        ("order 2: virtual heads (4)", "order", 2, 0.0625),
        ("L0H0 knocked out", "head", 1, 0.25),
        ("L0H1 knocked out", "head", 1, 0.0125),
        ("MLP0 knocked out", "mlp", 0, 1.875),
        ("L1H0 knocked out", "head", 1, 0.5),
        ("L1H1 knocked out", "head", 1, -0.03),
        ("MLP1 knocked out", "mlp", 0, 0.625),
    ]
    m["term_importance"] = {
        "clean_loss": 2.25,
        "mode": "zero",
        "n_tokens": 512,
        "terms": [
            {"term": term, "kind": kind, "order": order, "loss_increase": v}
            for term, kind, order, v in terms
        ],
    }
    m["training"], m["phase_change"] = None, None
    m["not_computed"] = {"training": "model given in memory"}
    return m


def gpt2_shaped(n_layers: int = 12, n_heads: int = 12, n_tokens: int = 48, seed: int = 0) -> dict:
    """A GPT-2-small-shaped analysis (12 x 12 = 144 heads, 64 eigenvalues a spectrum, 48
    attention tokens, every composition pair) of seeded random numbers, to check that the
    report of a large model stays small and keeps every value."""
    import random

    rng = random.Random(seed)
    m = v2_analysis()["models"][0]
    m["name"] = "gpt2-shaped"
    m["config"].update(n_layers=n_layers, n_heads=n_heads, d_model=768, d_head=64)
    labels = ["other", "induction", "previous_token", "copying"]
    heads = []
    for layer in range(n_layers):
        for head in range(n_heads):
            h = _head(
                layer,
                head,
                rng.choice(labels),
                _scores(*(round(rng.random(), 4) for _ in SCORES)),
                None,
                rng.uniform(-1, 1),
            )
            h["ov_eigenvalues"] = [[rng.gauss(0, 1), rng.gauss(0, 1)] for _ in range(64)]
            h["qk_eigenvalues"] = [[rng.gauss(0, 1), rng.gauss(0, 1)] for _ in range(64)]
            heads.append(h)
    m["heads"] = heads
    tokens = [f"t{i}" for i in range(n_tokens - len(HOSTILE))] + HOSTILE

    def pattern() -> list:
        rows = []
        for i in range(n_tokens):
            w = [rng.random() ** 4 for _ in range(i + 1)]
            s = sum(w)
            rows.append([x / s for x in w] + [0.0] * (n_tokens - i - 1))
        return rows

    m["attention"] = {
        "tokens": tokens,
        "patterns": [[pattern() for _ in range(n_heads)] for _ in range(n_layers)],
        "text": "random tokens",
    }
    m["composition"] = {
        kind: [
            [
                [
                    [0.03 + 0.01 * rng.random() if l0 < l1 else None for _ in range(n_heads)]
                    for l1 in range(n_layers)
                ]
                for _ in range(n_heads)
            ]
            for l0 in range(n_layers)
        ]
        for kind in "qkv"
    }
    m["composition"]["baseline"] = {"q": 0.035, "k": 0.035, "v": 0.035}
    m["composition"]["baseline_std"] = {"q": 0.001, "k": 0.001, "v": 0.001}
    m["induction_circuits"] = []
    m["repetition"] = None
    m["phase_change"] = None
    return {"schema_version": 2, "generator": "qkov test", "models": [m]}
