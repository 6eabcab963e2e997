"""`analyze`: run every analysis on one or more models and collect the analysis dict.

An orchestrator: it picks the inputs (the evaluation set of `qkov.data.evaluation`, the
example text of the attention views), calls the library (circuits, heads, composition,
trigrams, ablation, metrics) and converts the records to the analysis.json schema
(qkov.report.schema, version 2). It computes nothing itself. Every architecture qkov's
model has (MLPs, biases, layernorm/rmsnorm) gets every analysis: the library reads learned
norms through folded weights (`qkov.fold`). `qkov demo` passes the 2-, 1- and 0-layer
models as one list, so the report shows their losses side by side.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qkov import __version__
from qkov.ablation import icl_from_logits, term_importance
from qkov.allocator import return_freed_memory
from qkov.attribution import attribute
from qkov.budget import MAX_EXAMPLE_TOKENS, Budget
from qkov.checkpoint import check_folders, load, read_train_config
from qkov.circuits import embedding_rms, final_norm_scale, positional_qk, top_bigrams
from qkov.classification import classify_heads
from qkov.config import TRAINING_ONLY, ModelConfig
from qkov.data.evaluation import DEFAULT_SEQUENCES, EvaluationSet, evaluation_set
from qkov.data.probes import repeated_random_tokens
from qkov.data.tokenizer import decode_token
from qkov.errors import QkovError
from qkov.head_records import head_record, head_trigrams, induction_circuits
from qkov.heads import attention_patterns
from qkov.heads import head_scores as score_heads
from qkov.hf import is_hf_folder
from qkov.io import atomic_write_text, check_output_dir
from qkov.loss import next_token_loss
from qkov.metrics import phase_change, training_history
from qkov.model import AttnOnlyTransformer
from qkov.progress import Stages
from qkov.qk_terms import QK_MAX_ORDER, qk_expansions
from qkov.repetition import repetition_half_len, repetition_test
from qkov.report import SCHEMA_VERSION, dumps, render_report
from qkov.split_tokens import sample_candidates, split_token_candidates
from qkov.training_probe import training_probe
from qkov.trigrams import DEFAULT_MIN_COUNT, allowed_tokens
from qkov.virtual_heads import virtual_head_ov

ModelLike = str | Path | AttnOnlyTransformer

# Shown in the attention views: a short piece of Python that repeats itself, so an
# induction head lights up on the second copy (the default corpus is Python source).
EXAMPLE_TEXT = (
    "def mean(values):\n    total = sum(values)\n    return total / len(values)\n\n"
    "def mean(values):\n    total = sum(values)\n    return total / len(values)\n"
)
QK_TERM_SEQUENCES = 4  # evaluation sequences the QK terms are measured on
QK_TERM_POSITIONS = 256  # ... their first tokens (a term is [batch, dest, src]: pos^2 each)
# Knock-outs (a forward pass per head) and the per-head scores on the evaluation text are
# measured on its first sequences: their records give the tokens they rest on.
ABLATION_SEQUENCES = 16
POSITIONAL_QK_POSITIONS = 16  # the corner of W_pos W_QK W_pos^T shown per layer-0 head
N_VIRTUAL_HEADS = 20  # virtual heads kept, by V-composition
_ORDER_NAMES = {0: "direct path", 1: "single heads", 2: "virtual heads"}


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def analyze(
    models: ModelLike | Sequence[ModelLike],
    *,
    names: Sequence[str] | None = None,
    text: str | None = None,
    text_name: str = "the given text",
    evaluation: EvaluationSet | None = None,
    max_sequences: int = DEFAULT_SEQUENCES,
    n_bigrams: int = 20,
    n_trigrams: int = 8,
    min_token_count: int | None = DEFAULT_MIN_COUNT,
    seed: int = 0,
    log: Callable[[str], None] | None = _log_stderr,
) -> dict[str, Any]:
    """The analysis dict (schema: qkov.report.schema) of one or more models.

    models: a checkpoint dir, a model, or a list of them (first = main model). text: a text
    to evaluate on and to show in the attention views (named text_name); without it each
    model's evaluation set is the held-out documents of its training corpus, or the
    random-token probe for a model without a text corpus (`qkov.data.evaluation`), and the
    attention views show EXAMPLE_TEXT; at most max_sequences sequences. evaluation: one set
    for every model instead.
    min_token_count: skip-trigrams rank only tokens seen that often in training (where the
    run recorded token counts); None ranks all tokens."""
    items = list(models) if isinstance(models, (list, tuple)) else [models]
    if not items:
        raise QkovError("analyze needs at least one model or checkpoint directory")
    if names is not None and len(names) != len(items):
        raise QkovError(f"got {len(names)} names for {len(items)} models: pass one per model")
    folders = [item for item in items if not isinstance(item, AttnOnlyTransformer)]
    needs_text = text is not None and evaluation is None
    check_folders(folders, text="the text cannot be encoded" if needs_text else None)
    records = []
    for i, item in enumerate(items):
        in_memory = isinstance(item, AttnOnlyTransformer)
        model = item if in_memory else load(item, for_analysis=True)
        checkpoint = None if in_memory else str(item)
        name = names[i] if names else (Path(item).name if checkpoint else f"{model.cfg.n_layers}L")
        ev = evaluation or evaluation_set(
            model,
            checkpoint,
            text=text,
            text_name=text_name,
            max_sequences=max_sequences,
            seed=seed,
        )
        if log:
            log(
                f"analyzing {name} ({_count(model.cfg.n_layers, 'layer')} x "
                f"{_count(model.cfg.n_heads, 'head')})"
            )
        with torch.no_grad():
            records.append(
                analyze_model(
                    model,
                    name=name,
                    checkpoint=checkpoint,
                    evaluation=ev,
                    example_text=text or EXAMPLE_TEXT,
                    n_bigrams=n_bigrams,
                    n_trigrams=n_trigrams,
                    min_token_count=min_token_count,
                    seed=seed,
                    log=log,
                )
            )
    evaluations = {r["evaluation"]["description"] for r in records}
    if log and len(evaluations) > 1:
        log(
            "note: the models were evaluated on different sets, so their losses are not "
            "comparable: "
            + "; ".join(f"{r['name']}: {r['evaluation']['description']}" for r in records)
        )
    return {"schema_version": SCHEMA_VERSION, "generator": f"qkov {__version__}", "models": records}


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def analyze_model(
    model: AttnOnlyTransformer,
    *,
    name: str,
    evaluation: EvaluationSet,
    checkpoint: str | None = None,
    example_text: str = EXAMPLE_TEXT,
    n_bigrams: int = 20,
    n_trigrams: int = 8,
    min_token_count: int | None = DEFAULT_MIN_COUNT,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One MODEL record of the analysis dict (see qkov.report.schema). log: one line as
    each stage starts, with the seconds since the model's analysis began (long on a large
    model: GPT-2 small takes minutes)."""
    model.eval()
    cfg, tok = model.cfg, model.tokenizer
    stage = Stages(name, log)
    plan = Budget.of(cfg, evaluation.tokens)
    if plan.n_sequences < evaluation.tokens.shape[0]:
        evaluation = EvaluationSet(
            evaluation.tokens[: plan.n_sequences],
            f"{evaluation.description} (first {plan.n_sequences} of "
            f"{evaluation.tokens.shape[0]} sequences: the forward-pass budget at this size)",
            evaluation.kind,
        )
    tokens = model.check_tokens(evaluation.tokens)
    stage(f"loss on {evaluation.n_tokens:,} tokens, bigrams")
    logits = model(tokens)
    loss = float(next_token_loss(logits, tokens))
    # a Hugging Face folder was not trained by qkov: how qkov initialises a model (seed,
    # init_std, pos_init_std) says nothing of it
    elsewhere = checkpoint is not None and is_hf_folder(Path(checkpoint))
    rec: dict[str, Any] = {
        "name": name,
        "checkpoint": checkpoint,
        "config": {
            k: v for k, v in cfg.to_dict().items() if not elsewhere or k not in TRAINING_ONLY
        },
        "n_params": cfg.n_params,
        "tokenizer": {"vocab_size": tok.get_vocab_size()} if tok is not None else None,
        "evaluation": evaluation.to_dict(),
        "loss": {"value": loss, "n_tokens": evaluation.n_tokens},
        "bigrams": top_bigrams(model, n_bigrams, n_rows=plan.bigram_rows, seed=seed),
        "not_computed": {},
        "budget": plan.to_dict(),
    }
    _training(rec, checkpoint)
    # A head's OV circuit (its skip-trigram boosts) is written before the final norm: the
    # norm's divisor on this text turns it into logits (absent without a final norm).
    scale = final_norm_scale(model, tokens[:ABLATION_SEQUENCES])
    if scale is not None:
        rec["final_scale"] = scale.to_dict()
        # The bigram table reads each token over its own RMS: the final norm's divisor only
        # where nothing else is in the stream (no layers, no W_pos added to it).
        if cfg.n_layers or cfg.positional == "standard":
            rec["embedding_rms"] = embedding_rms(model)
    # A 0-layer model sees only the current token: its ICL score is the baseline that
    # token statistics alone give (early and late windows hold different tokens).
    icl = icl_from_logits(logits, tokens).to_dict()
    del logits
    rec["icl"] = {k: icl[k] for k in ("score", "stderr", "early", "late", "n_sequences")}
    if cfg.n_layers == 0:
        stage("done")
        return rec
    stage(f"head scores and labels ({_count(cfg.n_layers * cfg.n_heads, 'head')})")
    rec["probe_icl_score"] = training_probe(model, seed=seed, repetition=False)["probe_icl_score"]
    rec["attention"] = _attention(model, example_text, seed)
    # Minutes at 1B (TinyLlama: a forward pass of the probe, Q/K/V-composition of 704 heads):
    # a line for each part.
    stage("head scores on the repeated-token probe, composition scores, labels")
    cls = classify_heads(model, seed=seed, log=stage)
    text_scores = None
    if evaluation.kind == "text":
        stage("head scores on the evaluation text")
        text_scores = score_heads(model, tokens[:ABLATION_SEQUENCES]).to_dict()
    # What each group of head scores rests on (the report says it beside the head table):
    # the probe classify_heads drew, and the first sequences of the evaluation text.
    rec["head_scores_measured_on"] = {
        "probe": {
            "n_sequences": cls.scores.n_sequences,
            "seq_len": cls.scores.seq_len,
            "seed": seed,
        },
        "text": (
            {
                "n_sequences": text_scores["n_sequences"],
                "seq_len": text_scores["seq_len"],
                "of_sequences": int(tokens.shape[0]),
            }
            if text_scores
            else None
        ),
    }
    keep = _token_filter(rec, model, min_token_count)
    stage("OV and QK spectra, skip-trigrams of every head")
    candidates = split_token_candidates(model, allowed_tokens(model, keep))  # once, not per head
    split = sample_candidates(candidates, plan.split_candidates, seed)
    split_of = candidates.shape[0] if split.shape[0] < candidates.shape[0] else None
    rec["heads"] = []
    tables = head_trigrams(model, cls.records, n_trigrams, keep, plan, seed)
    for i, (r, trig) in enumerate(zip(cls.records, tables, strict=True)):
        rec["heads"].append(head_record(model, r, text_scores, trig, n_trigrams, keep, split))
        if split_of is not None:
            rec["heads"][-1]["split_token_trigrams"]["of_candidates"] = split_of
        stage.progress(i + 1, len(cls.records), "heads")
        return_freed_memory()  # each head's d_vocab-sized products (qkov.allocator)
    rec["induction_circuits"] = induction_circuits(cls)
    # The peers' test: 10 sequences, a block of 50 (or n_ctx / 2) repeated once.
    stage("repeated random tokens test")
    half = repetition_half_len(model)
    if half >= 4:
        rec["repetition"] = repetition_test(model, half_len=half, seed=seed).to_dict()
    else:
        rec["not_computed"]["repetition"] = f"n_ctx {cfg.n_ctx} holds no repeated block of 4"
    if cls.composition is not None:
        comp = cls.composition.to_dict()
        rec["composition"] = {k: comp[k] for k in "qkv"} | {
            "baseline": comp["baseline_mean"],
            "baseline_std": comp["baseline_std"],
        }
    on = plan.term_importance_on
    ti_tokens = tokens[:ABLATION_SEQUENCES] if on is None else tokens[: on[0], : on[1]]
    n_seq, seq_len = ti_tokens.shape
    stage(f"term importance on {_count(n_seq, 'sequence')} of {seq_len} tokens")
    rec["term_importance"] = _term_importance(model, ti_tokens, per_head=plan.head_knockouts)
    if not plan.head_knockouts:
        rec["not_computed"]["head_knockouts"] = (
            f"{cfg.n_layers * cfg.n_heads} heads x one forward pass each is over the budget at "
            "this scale: term importance shows the path orders only (`qkov.ablation."
            "head_ablation_logits` knocks out chosen heads)"
        )
    if plan.qk_terms:
        stage("QK terms of every head")
        qk_tokens = tokens[:QK_TERM_SEQUENCES, :QK_TERM_POSITIONS]
        # one head's terms at a time: all of them at once held ~10 GB at d_model 2048
        rec["qk_terms"] = [
            qe.summary() for qe in qk_expansions(model, qk_tokens, max_order=QK_MAX_ORDER)
        ]
        rec["qk_terms_measured_on"] = {
            "n_sequences": min(QK_TERM_SEQUENCES, tokens.shape[0]),
            "seq_len": min(QK_TERM_POSITIONS, tokens.shape[1]),
        }
    else:
        rec["not_computed"]["qk_terms"] = (
            f"{plan.qk_sides} query-side paths per head at max_order {QK_MAX_ORDER} (the terms "
            "are their pairs): over the limit at this size; `qkov heads --qk-terms --qk-heads "
            "L5H1 --qk-max-order 1` splits chosen heads"
        )
    stage("virtual heads, positional QK, attribution of the example text")
    if cfg.n_layers >= 2:
        top = virtual_head_ov(model, top=N_VIRTUAL_HEADS)
        rec["virtual_heads"] = [v.to_dict() for v in top]
    if cfg.positional not in ("none", "rotary"):
        rec["positional_qk"] = [
            {
                "head": [0, h],
                "scores": _rounded(positional_qk(model, 0, h, POSITIONAL_QK_POSITIONS)),
            }
            for h in range(cfg.n_heads)
        ]
    else:
        rec["not_computed"]["positional_qk"] = (
            "positional='rotary': no W_pos; a rotary head's score depends on the offset "
            "(qkov.circuits.qk_circuit(model, layer, head, offset=...))"
            if cfg.positional == "rotary"
            else "positional='none': no W_pos"
        )
    ids, what = _example_ids(model, example_text, seed)
    att = attribute(model, torch.tensor(ids), max_order=plan.path_max_order)
    rec["attribution"] = {"text": what, **att.to_dict()}
    stage("done")
    return rec


def _rounded(t: Tensor, digits: int = 4) -> list:
    """A matrix as nested lists, each entry to `digits` significant digits (never to a fixed
    number of decimals, which writes a map of small values as zeros)."""
    return [[float(f"{x:.{digits}g}") for x in row] for row in t.tolist()]


def _training(rec: dict[str, Any], checkpoint: str | None) -> None:
    """How the run was trained (its train_config.json), the training curves (in tokens
    seen) and where the induction head formed."""
    rec["trained"] = read_train_config(checkpoint) if checkpoint else None
    history = training_history(checkpoint) if checkpoint else None
    if history is None:
        rec["not_computed"]["training"] = (
            "model given in memory" if checkpoint is None else "no metrics.jsonl in the checkpoint"
        )
        return
    rec["training"] = history
    rec["phase_change"] = phase_change(history)


def _token_filter(
    rec: dict[str, Any], model: AttnOnlyTransformer, min_count: int | None
) -> int | None:
    """The minimum count skip-trigrams are ranked with (None: all tokens), recorded."""
    counts = getattr(model, "token_counts", None)  # token_counts.json of the run
    if not min_count or counts is None:
        rec["token_filter"] = None
        why = "no token counts recorded with this run" if counts is None else "asked for all"
        tok, V = model.tokenizer, model.cfg.d_vocab
        if tok is not None and tok.get_vocab_size() < V:  # padded: `allowed_tokens` drops them
            why += f"; ids {tok.get_vocab_size():,}-{V - 1:,}, padding no text holds, left out"
        rec["not_computed"]["token_filter"] = f"all tokens ranked ({why})"
        return None
    rec["token_filter"] = {
        "min_count": min_count,
        "n_kept": int((counts >= min_count).sum()),
        "n_tokens": int(counts.numel()),
    }
    return min_count


def _term_importance(
    model: AttnOnlyTransformer, tokens: Tensor, per_head: bool = True
) -> dict[str, Any]:
    """The order ablations, then each layer's head knock-outs and its MLP's (forward order).
    An order counts the heads on a path; MLP outputs and biases are path starts like the
    embedding, so their own contributions are order 0 (`qkov.ablation`). Every order is
    ablated exactly (one residual stream per order: no cut is needed); per_head=False
    leaves out the knock-outs (one forward pass each)."""
    ti = term_importance(model, tokens, per_head=per_head, mean_knockouts=False)
    cfg = model.cfg
    terms = [
        {
            "term": _order_name(o.order, o.n_terms, cfg),
            "kind": "order",
            "order": o.order,
            "loss_increase": o.delta,
        }
        for o in ti.orders
    ]
    mlps = {m.layer: m for m in ti.mlps}
    for l in range(cfg.n_layers):
        for h in (h for h in ti.heads if h.layer == l):
            name, delta = f"{h.name} knocked out", h.zero_delta
            terms.append({"term": name, "kind": "head", "order": 1, "loss_increase": delta})
        if l in mlps:  # an MLP's output starts paths: order 0
            name, delta = f"{mlps[l].name} knocked out", mlps[l].zero_delta
            terms.append({"term": name, "kind": "mlp", "order": 0, "loss_increase": delta})
    return {"clean_loss": ti.clean_loss, "mode": ti.mode, "n_tokens": ti.n_tokens, "terms": terms}


def _order_name(order: int, n_terms: int, cfg: ModelConfig) -> str:
    """'order 1: single heads (4)'; order 0 of a model with biases or MLPs names those
    starts too (its count of head chains, 1, would hide them)."""
    if order == 0 and (cfg.bias or cfg.d_mlp):
        parts = ["direct path"] + ["biases"] * cfg.bias + ["MLPs"] * bool(cfg.d_mlp)
        return "order 0: " + ", ".join(parts)
    return f"order {order}: " + _ORDER_NAMES.get(order, f"{order}-head chains") + f" ({n_terms})"


def _attention(model: AttnOnlyTransformer, text: str, seed: int) -> dict[str, Any]:
    """The attention views: patterns on the first tokens of `text` (or, without a tokenizer,
    on one repeated random sequence)."""
    ids, what = _example_ids(model, text, seed)
    patterns = attention_patterns(model, torch.tensor([ids]))[:, 0]  # [layer, head, dest, src]
    return {
        "tokens": [decode_token(model.tokenizer, i) for i in ids],
        "patterns": [
            [[[round(x, 4) for x in row] for row in head] for head in layer]
            for layer in patterns.tolist()
        ],
        "text": what,
    }


def _example_ids(model: AttnOnlyTransformer, text: str, seed: int) -> tuple[list[int], str]:
    """The tokens the attention and attribution views show: the first tokens of `text`,
    or (no tokenizer) one repeated random sequence; and what they are."""
    n_max = min(MAX_EXAMPLE_TOKENS, model.cfg.n_ctx)
    ids = model.tokenizer.encode(text).ids[:n_max] if model.tokenizer is not None else []
    what = "example text" if text == EXAMPLE_TEXT else "the given text"
    if len(ids) < 2:
        half = max(2, n_max // 2)
        ids = repeated_random_tokens(model.cfg.d_vocab, 1, half, seed)[0].tolist()[:n_max]
        what = f"repeated random tokens (seed {seed})"
    return ids, what


def write_analysis(out_dir: str | Path, analysis: dict[str, Any]) -> tuple[Path, Path]:
    """Write analysis.json and report.html into out_dir, each atomically. Returns both paths."""
    out = check_output_dir(out_dir)
    html = render_report(analysis)  # validates before anything is written
    json_path, html_path = out / "analysis.json", out / "report.html"
    atomic_write_text(json_path, dumps(analysis, indent=1) + "\n")
    atomic_write_text(html_path, html)
    return json_path, html_path
