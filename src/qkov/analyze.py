"""`analyze`: run every analysis on one or more models and collect the analysis dict.

A thin orchestrator: the numbers come from qkov.circuits, composition, heads, trigrams and
ablation; this module only picks the inputs (sample text, evaluation tokens), converts the
records to the analysis.json schema (qkov.report.schema) and writes analysis.json +
report.html. `qkov demo` passes the 0-, 1- and 2-layer models as one list, so the report
shows their losses side by side.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkov import __version__
from qkov.ablation import lm_loss, term_importance
from qkov.checkpoint import load
from qkov.circuits import direct_path, eigenvalue_copying_score, ov_eigenvalues, qk_circuit
from qkov.composition import composition_scores
from qkov.data.probes import repeated_random_tokens
from qkov.data.tokenizer import decode_token
from qkov.errors import QkovError
from qkov.factored import FactoredMatrix
from qkov.heads import classify_heads
from qkov.training_probe import training_probe
from qkov.io import atomic_write_text
from qkov.model import AttnOnlyTransformer
from qkov.report import SCHEMA_VERSION, dumps, render_report
from qkov.trigrams import skip_trigrams

ModelLike = str | Path | AttnOnlyTransformer

# Shown in the attention views: a short piece of Python that repeats itself, so an
# induction head lights up on the second copy (the default corpus is Python source).
SAMPLE_TEXT = (
    "def mean(values):\n    total = sum(values)\n    return total / len(values)\n\n"
    "def mean(values):\n    total = sum(values)\n    return total / len(values)\n"
)
# Series of metrics.jsonl drawn as training curves (bookkeeping fields are left out).
SKIP_METRICS = {"step", "tokens", "lr", "tokens_per_s"}
MAX_SAMPLE_TOKENS = 48
CHUNK_ELEMENTS = 2**22  # rows of the bigram table formed at once: 16 MiB of fp32


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def analyze(
    models: ModelLike | Sequence[ModelLike],
    *,
    extra_models: Sequence[ModelLike] = (),
    names: Sequence[str] | None = None,
    text: str | None = None,
    eval_text: str | None = None,
    eval_tokens: Tensor | None = None,
    eval_source: str | None = None,
    n_bigrams: int = 20,
    n_trigrams: int = 8,
    seed: int = 0,
    log: Callable[[str], None] | None = _log_stderr,
) -> dict[str, Any]:
    """The analysis dict (schema: qkov.report.schema) of one or more models.

    models: a checkpoint dir, a model, or a list of them (first = main model); extra_models
    are appended (e.g. the 0- and 1-layer models next to a 2-layer one). text: sample text for
    the attention views (default SAMPLE_TEXT). Loss and term importance use eval_tokens
    [batch, pos] if given, else eval_text (or the sample text) encoded with each model's
    tokenizer, else a seeded repeated-random-token batch for models without a tokenizer.
    eval_source: words for where eval_tokens came from, shown in the report."""
    items = list(models) if isinstance(models, (list, tuple)) else [models]
    items += list(extra_models)
    if not items:
        raise QkovError("analyze needs at least one model or checkpoint directory")
    if names is not None and len(names) != len(items):
        raise QkovError(f"got {len(names)} names for {len(items)} models: pass one per model")
    records = []
    for i, item in enumerate(items):
        model, source = (
            (item, None) if isinstance(item, AttnOnlyTransformer) else (load(item), str(item))
        )
        name = names[i] if names else (Path(source).name if source else f"{model.cfg.n_layers}L")
        if log:
            log(f"analyzing {name} ({model.cfg.n_layers} layers x {model.cfg.n_heads} heads)")
        with torch.no_grad():
            records.append(
                analyze_model(
                    model,
                    name=name,
                    source=source,
                    text=text,
                    eval_text=eval_text,
                    eval_tokens=eval_tokens,
                    eval_source=eval_source,
                    n_bigrams=n_bigrams,
                    n_trigrams=n_trigrams,
                    seed=seed,
                )
            )
    return {"schema_version": SCHEMA_VERSION, "generator": f"qkov {__version__}", "models": records}


def analyze_model(
    model: AttnOnlyTransformer,
    *,
    name: str,
    source: str | None = None,
    text: str | None = None,
    eval_text: str | None = None,
    eval_tokens: Tensor | None = None,
    eval_source: str | None = None,
    n_bigrams: int = 20,
    n_trigrams: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """One MODEL record of the analysis dict (see qkov.report.schema)."""
    model.eval()
    cfg = model.cfg
    tok = model.tokenizer
    rec: dict[str, Any] = {
        "name": name,
        "source": source,
        "config": cfg.to_dict(),
        "n_params": cfg.n_params,
        "tokenizer": {"vocab_size": tok.get_vocab_size()} if tok is not None else None,
        "not_computed": {},
    }
    tokens, source_note = _eval_tokens(model, eval_tokens, eval_text or text or SAMPLE_TEXT, seed)
    eval_source = f"{eval_source} ({source_note})" if eval_source else source_note
    rec["loss"] = {
        "value": lm_loss(model(tokens), tokens),
        "tokens": tokens[:, 1:].numel(),
        "source": eval_source,
    }
    rec["bigrams"] = top_bigrams(model, n_bigrams)
    if source:
        rec["training"], rec["val_loss"] = training_history(Path(source))
    else:
        rec["not_computed"]["training"] = "model given in memory (no metrics.jsonl)"
    if cfg.n_layers == 0:
        return rec
    rec["attention"] = sample_attention(model, text or SAMPLE_TEXT, seed)
    cls = classify_heads(model, seed=seed)
    rec["heads"] = [_head(model, r, n_trigrams) for r in cls.records]
    rec["induction_circuits"] = [
        _circuit(r, cls) for r in cls.records if r.label == "induction" and r.k_composition
    ]
    if cfg.n_layers >= 2:
        comp = composition_scores(model, seed=seed).to_dict()
        rec["composition"] = {k: comp[k] for k in "qkv"} | {
            "baseline": comp["baseline_mean"],
            "baseline_std": comp["baseline_std"],
        }
    ti = term_importance(model, tokens)
    terms = [
        {
            "term": f"order {o.order}: "
            + _ORDER_NAMES.get(o.order, f"{o.order}-head chains")
            + f" ({o.n_terms})",
            "kind": "order",
            "order": o.order,
            "loss_increase": o.delta,
        }
        for o in ti.orders
    ]
    terms += [
        {"term": f"{h.name} knocked out", "kind": "head", "order": 1, "loss_increase": h.zero_delta}
        for h in ti.heads
    ]
    rec["term_importance"] = {
        "clean_loss": ti.clean_loss,
        "mode": ti.mode,
        "n_tokens": ti.n_tokens,
        "source": eval_source,
        "terms": terms,
    }
    rec["icl_score"] = training_probe(model, seed=seed)["probe_icl_score"]
    return rec


_ORDER_NAMES = {0: "direct path", 1: "single heads", 2: "virtual heads"}


def _head(model: AttnOnlyTransformer, r: Any, n_trigrams: int) -> dict[str, Any]:
    """A HEAD record: scores and label from classify_heads, spectra and skip-trigrams."""
    ov = ov_eigenvalues(model, r.layer, r.head)
    qk = qk_circuit(model, r.layer, r.head).eigenvalues
    trig = skip_trigrams(model, r.layer, r.head, k=n_trigrams, per_source=2)
    return {
        "layer": r.layer,
        "head": r.head,
        "role": r.label.replace("-", "_"),
        "scores": {f"{k}_score": v for k, v in r.scores.items()},
        "copying": eigenvalue_copying_score(ov),
        "ov_eigenvalues": _complex_pairs(ov),
        "qk_eigenvalues": _complex_pairs(qk),
        "skip_trigrams": [
            {
                "source": t.source_str,
                "destination": t.destination_str,
                "out": t.out_str,
                "score": t.score,
            }
            for t in trig
        ],
    }


def _circuit(r: Any, cls: Any) -> dict[str, Any]:
    """An induction head and the earlier head its key reads most (K-composition)."""
    top = r.k_composition[0]
    partner = cls.record(top.layer, top.head)
    return {
        "previous_token_head": [top.layer, top.head],
        "induction_head": [r.layer, r.head],
        "k_composition": top.score,
        "k_composition_z": top.z,
        "partner_role": partner.label.replace("-", "_"),  # as the heads' "role"
        "previous_token_score": partner.scores.get("previous_token"),
        "induction_score": r.scores.get("induction"),
        "qk_term_eigenvalue_score": r.qk_term_eigenvalue_score,
    }


def _complex_pairs(z: Tensor) -> list[list[float]]:
    return [[float(v.real), float(v.imag)] for v in z.reshape(-1)]


def _eval_tokens(
    model: AttnOnlyTransformer, tokens: Tensor | None, text: str, seed: int
) -> tuple[Tensor, str]:
    """Evaluation batch [batch, pos] and a description of where it came from."""
    cfg = model.cfg
    if tokens is not None:
        t = model.check_tokens(tokens)
        return t, f"given tokens ({t.shape[0]} x {t.shape[1]})"
    if model.tokenizer is not None:
        ids = model.tokenizer.encode(text).ids
        if len(ids) < 3:
            raise QkovError("evaluation text encodes to fewer than 3 tokens: pass a longer text")
        n = min(cfg.n_ctx, 128, len(ids))
        rows = [ids[i : i + n] for i in range(0, len(ids) - n + 1, n)][:16]
        return model.check_tokens(torch.tensor(rows)), f"{len(rows) * n} tokens of text"
    half = max(2, min(32, cfg.n_ctx // 2))
    return (
        model.check_tokens(repeated_random_tokens(cfg.d_vocab, 8, half, seed)),
        f"repeated random tokens (8 x {2 * half}, seed {seed})",
    )


@torch.no_grad()
def top_bigrams(model: AttnOnlyTransformer, k: int = 20) -> list[dict[str, Any]]:
    """Largest entries of the direct path W_E W_U with each row centred (softmax ignores a
    constant per row). Rows are formed in chunks; the vocab x vocab table never exists."""
    table: FactoredMatrix = direct_path(model)
    V = model.cfg.d_vocab
    chunk = max(1, CHUNK_ELEMENTS // V)
    best_v = torch.empty(0)
    best_i = torch.empty(0, dtype=torch.long)
    for start in range(0, V, chunk):
        block = table.rows(start, start + chunk).dense(force=True).float()  # [c, V]
        block = block - block.mean(dim=1, keepdim=True)
        v, i = block.flatten().topk(min(k, block.numel()))
        best_v = torch.cat([best_v, v.cpu()])
        best_i = torch.cat([best_i, i.cpu() + start * V])
        best_v, order = best_v.topk(min(k, best_v.numel()))
        best_i = best_i[order]
    out = []
    for v, i in zip(best_v.tolist(), best_i.tolist(), strict=True):
        s, t = divmod(i, V)
        out.append(
            {
                "source": decode_token(model.tokenizer, s),
                "out": decode_token(model.tokenizer, t),
                "logit": v,
            }
        )
    return out


@torch.no_grad()
def sample_attention(model: AttnOnlyTransformer, text: str, seed: int = 0) -> dict[str, Any]:
    """Attention patterns [layer][head][dest][src] on the sample text (or, without a
    tokenizer, on one repeated random sequence)."""
    cfg = model.cfg
    n_max = min(MAX_SAMPLE_TOKENS, cfg.n_ctx)
    if model.tokenizer is not None:
        ids = model.tokenizer.encode(text).ids[:n_max]
        source = "sample text"
    else:
        ids = []
    if not ids:
        half = max(2, n_max // 2)
        ids = repeated_random_tokens(cfg.d_vocab, 1, half, seed)[0].tolist()[:n_max]
        source = f"repeated random tokens (seed {seed})"
    tokens = torch.tensor([ids])
    _, cache = model.run_with_cache(tokens, names=[f"pattern.{l}" for l in range(cfg.n_layers)])
    return {
        "tokens": [decode_token(model.tokenizer, i) for i in ids],
        "patterns": [
            [
                [[round(x, 4) for x in row] for row in head]
                for head in cache[f"pattern.{l}"][0].tolist()
            ]
            for l in range(cfg.n_layers)
        ],
        "source": source,
    }


def read_metrics(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Training series {name: [[step, value], ...]} and the last val_loss from metrics.jsonl.
    A torn last line (a run killed mid-write) is skipped."""
    if not path.is_file():
        return None, None
    series: dict[str, list[list[float]]] = {}
    last_val = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), (int, float)):
            continue
        for key, value in rec.items():
            if (
                key in SKIP_METRICS
                or isinstance(value, bool)
                or not isinstance(value, (int, float))
            ):
                continue
            series.setdefault(key, []).append([rec["step"], value])
        if isinstance(rec.get("val_loss"), (int, float)):
            last_val = {"value": rec["val_loss"], "step": rec["step"]}
    return ({"series": series} if series else None), last_val


def training_history(model_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """`read_metrics` of model_dir/metrics.jsonl, preceded by that of the run it was
    fine-tuned from when model_dir/base/ holds it (`qkov train --init-from`): the base's
    series first, then this run's with its steps counted on from the base's last step."""
    training, last_val = read_metrics(model_dir / "metrics.jsonl")
    base = training_history(model_dir / "base")[0] if (model_dir / "base").is_dir() else None
    if base is None:
        return training, last_val
    offset = max(step for points in base["series"].values() for step, _ in points)
    series = {k: [list(p) for p in v] for k, v in base["series"].items()}
    for key, points in (training or {"series": {}})["series"].items():
        series.setdefault(key, []).extend([step + offset, v] for step, v in points)
    if last_val is not None:
        last_val = {**last_val, "step": last_val["step"] + offset}
    return {"series": series}, last_val


def write_analysis(out_dir: str | Path, analysis: dict[str, Any]) -> tuple[Path, Path]:
    """Write analysis.json and report.html into out_dir, each atomically. Returns both paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QkovError(f"{out} exists and is not a directory: pass a directory for --out")
    html = render_report(analysis)  # validates before anything is written
    json_path, html_path = out / "analysis.json", out / "report.html"
    atomic_write_text(json_path, dumps(analysis, indent=1) + "\n")
    atomic_write_text(html_path, html)
    return json_path, html_path
