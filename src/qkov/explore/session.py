"""The explore app's library side: loaded models by name, what one text reads like
through a model (tokens, attention patterns, predictions, attributions), and each head's
panel (role, QK/OV eigenvalue statistics, copying, skip-trigrams), computed once per model
or head and cached. No HTTP here: the app (`qkov.explore.app`) only parses and calls.

Bad requests raise `RequestError` (a QkovError with an HTTP status), checked before any
work: empty text, text longer than the model's n_ctx (refused, never truncated: the reader
would not see what was cut), an unknown model or head."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qkov.data.tokenizer import decode_token, no_tokenizer
from qkov.errors import QkovError
from qkov.explore.attribution import next_token_attributions
from qkov.model import Transformer

MAX_TEXT_CHARS = 20_000  # before tokenizing: a longer text cannot fit any shipped n_ctx
TOP_PREDICTIONS = 5
TOP_PATHS = 6
N_TRIGRAMS = 8


class RequestError(QkovError):
    """A request the explorer refuses: `status` is the HTTP status the app answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class ExploreModel:
    """One loaded model and the head analyses computed for it (lazily, once)."""

    name: str
    model: Transformer
    path: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _roles: list[dict[str, Any]] | None = field(default=None, repr=False)
    # the part of the roles' classification running now (None: not running), for /api/progress
    stage: str | None = field(default=None, repr=False)
    _panels: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict, repr=False)

    def info(self) -> dict[str, Any]:
        cfg = self.model.cfg
        return {
            "name": self.name,
            "path": self.path,
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
            "n_ctx": cfg.n_ctx,
            "d_vocab": cfg.d_vocab,
            "d_mlp": cfg.d_mlp,
        }


class Explorer:
    """Models by name (the first is the default) and the three questions the page asks:
    `run` (a text through a model), `roles` (every head's label) and `head` (one head's
    panel). Each model's compute runs under its own lock (torch already uses every core)."""

    def __init__(self, models: dict[str, Transformer], paths: dict[str, str] | None = None):
        if not models:
            raise QkovError("no models to explore: give at least one checkpoint directory")
        paths = paths or {}
        self.models = {
            name: ExploreModel(name, m.eval(), paths.get(name, "")) for name, m in models.items()
        }
        for m in self.models.values():
            if m.model.tokenizer is None:
                raise QkovError(_no_tokenizer(m.name))

    @classmethod
    def from_dirs(
        cls, dirs: list[str | Path], log: Callable[[str], None] = lambda line: None
    ) -> Explorer:
        """Load checkpoint directories (none: the shipped demo models); each is named by
        its folder name (a repeated name gets a suffix, "-2"). log: a line as each loads."""
        from qkov.checkpoint import load
        from qkov.demo_models import NAMES, shipped

        paths = [Path(d) for d in dirs] or [shipped(n) for n in NAMES]
        _check_folders(paths)  # each folder, and all of them together, before a load
        models, where = {}, {}
        for p in paths:
            name, i = p.resolve().name or "model", 2
            while name in models:
                name, i = f"{p.resolve().name}-{i}", i + 1
            log(f"loading {p}")
            models[name], where[name] = load(p, for_analysis=True), str(p)
        return cls(models, where)

    def model(self, name: str | None) -> ExploreModel:
        if name is None:
            return next(iter(self.models.values()))
        if not isinstance(name, str) or name not in self.models:
            raise RequestError(
                f"unknown model {name!r}: use one of {', '.join(self.models)} (GET /api/models)"
            )
        return self.models[name]

    def list(self) -> list[dict[str, Any]]:
        return [m.info() for m in self.models.values()]

    # ------------------------------------------------------------------ a text through a model
    def encode(self, em: ExploreModel, text: Any) -> torch.Tensor:
        """The text's token ids [pos], refused (RequestError) when empty or over n_ctx."""
        if not isinstance(text, str):
            raise RequestError('"text" must be a string: send {"text": "..."}')
        if not text.strip():
            raise RequestError("text is empty: type something for the model to read")
        if len(text) > MAX_TEXT_CHARS:
            raise RequestError(
                f"text has {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,}: "
                "shorten it",
                413,
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON's "\ud800": no Unicode text, the tokenizer raises
            raise RequestError(
                f"text holds a lone surrogate ({text[e.start]!r} at character {e.start}), which "
                "is not Unicode text: send valid UTF-8"
            ) from None
        _refuse_dropped(em, text)
        ids = em.model.tokenizer.encode(text).ids
        n_ctx = em.model.cfg.n_ctx
        if len(ids) > n_ctx:
            raise RequestError(
                f"text is {len(ids)} tokens but model {em.name} reads at most n_ctx={n_ctx}: "
                "shorten it (it was refused, not truncated)",
                413,
            )
        if not ids:
            raise RequestError("text encodes to no tokens: type something else")
        return torch.tensor(ids, dtype=torch.long)

    def run(self, model: str | None, text: Any) -> dict[str, Any]:
        """tokens, patterns [layer][head][dest][src <= dest], per-position top predictions
        and the paths that push the target token (the actual next token; at the last
        position, the top prediction). Predictions and ranks are among the tokenizer's ids
        only (a vocabulary padded past it, as Pythia's, has ids no text holds); their
        probabilities are the model's softmax over every id."""
        from qkov.data.tokenizer import known_ids

        em = self.model(model)
        tokens = self.encode(em, text)
        m, tok = em.model, em.model.tokenizer
        known = known_ids(m.cfg.d_vocab, tok)  # [d_vocab] bool; None: the tokenizer has every id
        with em.lock, torch.no_grad():
            names = [f"pattern.{l}" for l in range(m.cfg.n_layers)]
            logits, cache = m.run_with_cache(tokens[None], names=names)
            logits = logits[0].float()  # [pos, d_vocab]
            probs = logits.softmax(-1)
            ranked = logits.clone()  # [pos, d_vocab]: padding ids at -inf, never ranked
            if known is not None:
                ranked[:, ~known.to(logits.device)] = float("-inf")
            k = min(TOP_PREDICTIONS, m.cfg.d_vocab if known is None else int(known.sum()))
            top_i = ranked.topk(k, dim=-1).indices  # [pos, k]
            top_p = probs.gather(-1, top_i)  # [pos, k]
            targets = torch.cat([tokens[1:], top_i[-1:, 0]])  # actual next token; last: top-1
            attributions = next_token_attributions(m, tokens, targets, TOP_PATHS)
            patterns = [
                [_lower_triangle(cache[n][0, h]) for h in range(m.cfg.n_heads)] for n in names
            ]
        n = tokens.shape[0]
        strings = [decode_token(tok, t) for t in tokens.tolist()]
        positions = []
        for i in range(n):
            t = int(targets[i])
            positions.append(
                {
                    "top": [
                        {"token": decode_token(tok, j), "id": j, "prob": round(float(p), 4)}
                        for p, j in zip(top_p[i].tolist(), top_i[i].tolist(), strict=True)
                    ],
                    "target": {
                        "token": decode_token(tok, t),
                        "id": t,
                        "actual": i < n - 1,
                        "prob": round(float(probs[i, t]), 4),
                        "rank": int((ranked[i] > logits[i, t]).sum()) + 1,
                    },
                    "attribution": _rounded(attributions[i]),
                }
            )
        return {
            "model": em.name,
            "n_ctx": m.cfg.n_ctx,
            "tokens": strings,
            "ids": tokens.tolist(),
            "patterns": patterns,
            "predictions": positions,
        }

    # ------------------------------------------------------------------ heads
    def roles(self, model: str | None) -> dict[str, Any]:
        """Every head's label from `classify_heads` (on its seeded probe) and its OV
        eigenvalue score: computed once per model."""
        em = self.model(model)
        with em.lock:
            if em._roles is None:
                try:
                    em._roles = _roles(em.model, log=lambda line: setattr(em, "stage", line))
                finally:
                    em.stage = None
        return {"model": em.name, "heads": em._roles}

    def progress(self, model: str | None) -> dict[str, Any]:
        """What the roles' classification of `model` is doing now (`stage`: None when it is
        not running) and whether its roles are ready: answered at once, never queued behind
        the compute it reports on (a minute at 1B)."""
        em = self.model(model)
        return {"model": em.name, "stage": em.stage, "roles_ready": em._roles is not None}

    def check(self, what: str, model: Any, *args: Any) -> None:
        """Refuse (RequestError) a request for `what` ("run", "roles" or "head") that names
        no model, no head or a text that cannot be read, without computing anything: the
        app asks this before queueing, so a bad request is not kept waiting behind the one
        compute thread (classify_heads on GPT-2 small takes ~15 s)."""
        if what == "run":
            self.encode(self.model(model), *args)
        elif what == "head":
            self._head_of(model, *args)
        else:
            self.model(model)

    def _head_of(self, model: Any, layer: Any, head: Any) -> tuple[ExploreModel, int, int]:
        em = self.model(model)
        cfg = em.model.cfg
        try:
            layer, head = int(layer), int(head)
        except (TypeError, ValueError):
            raise RequestError("layer and head must be integers: ?layer=0&head=1") from None
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise RequestError(
                f"model {em.name} has no head L{layer}H{head}: it has {cfg.n_layers} layers "
                f"of {cfg.n_heads} heads",
                404,
            )
        return em, layer, head

    def head(self, model: str | None, layer: Any, head: Any) -> dict[str, Any]:
        """One head's panel: role, QK and OV eigenvalues and their Σλ/Σ|λ|, the OV top-1
        fraction, the behavioural copying score, the top skip-trigrams. Cached."""
        em, layer, head = self._head_of(model, layer, head)
        cfg = em.model.cfg
        role = self.roles(em.name)["heads"][layer * cfg.n_heads + head]
        with em.lock:
            if (layer, head) not in em._panels:
                em._panels[(layer, head)] = _panel(em.model, layer, head)
        return {"model": em.name, **role, **em._panels[(layer, head)]}


def _refuse_dropped(em: ExploreModel, text: str) -> None:
    """Refuse (400) a text with characters the tokenizer cannot spell: one with neither the
    byte alphabet nor an unknown token drops them silently, and the page would show a
    reading of a text the user did not type (as truncation would). A character is dropped
    where it encodes, alone, to no token (BPE only merges symbols it has, so it is then
    dropped in context too; the encoding's offsets are unreliable once bytes are dropped).
    Whitespace is let pass (some pre-tokenizers split on it and drop it)."""
    chars = sorted({ch for ch in text if not ch.isspace()})
    alone = em.model.tokenizer.encode_batch(chars, add_special_tokens=False)
    gone = {ch for ch, enc in zip(chars, alone, strict=True) if not enc.ids}
    if gone:
        at = [i for i, ch in enumerate(text) if ch in gone]
        shown = ", ".join(f"{text[i]!r} at character {i}" for i in at[:3])
        more = f" and {len(at) - 3} more" if len(at) > 3 else ""
        raise RequestError(
            f"model {em.name}'s tokenizer cannot spell {shown}{more} (it would drop them, "
            "not read them): remove them or choose another model"
        )


def _lower_triangle(pattern: torch.Tensor) -> list[list[float]]:
    """[dest, src] -> row i holds sources 0..i (the rest is zero under the causal mask),
    rounded to 3 decimals (in float64, so each prints short)."""
    rows = ((pattern.double() * 1000).round() / 1000).tolist()
    return [row[: i + 1] for i, row in enumerate(rows)]


def _rounded(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "total": round(a["total"], 4),
        "rest": round(a["rest"], 4),
        "paths": [{**p, "logit": round(p["logit"], 4)} for p in a["paths"]],
    }


def _finite(x: float) -> float | None:
    return round(x, 4) if x == x and abs(x) != float("inf") else None


def _roles(model: Transformer, log: Callable[[str], None] = lambda line: None) -> list[dict]:
    """Every head's role; `log` gets a line as each part starts."""
    from qkov.classification import classify_heads

    if model.cfg.n_layers == 0:
        return []
    # the roles show the induction heads' partners (K-composition into them) and no knock-outs
    cls = classify_heads(model, composition=(), knockout=False, log=log)
    return [
        {
            "layer": r.layer,
            "head": r.head,
            "name": r.name,
            "label": r.label,
            "decided_by": r.decided_by,
            "scores": {k: _finite(v) for k, v in r.scores.items()},
            "ov_eigenvalue_score": _finite(r.ov_eigenvalue_score),
            "partners": [p.name for p in r.partners],
        }
        for r in cls.records
    ]


def _panel(model: Transformer, layer: int, head: int) -> dict[str, Any]:
    """A head's panel. On a large vocabulary (GPT-2's) the skip-trigrams and the OV top-1
    fraction are ranked over the seeded sample of sources `qkov analyze` uses
    (`qkov.budget.trigram_sources`; said in "sampled_sources"), so a panel takes seconds."""
    from qkov.budget import trigram_sources
    from qkov.eigenvalues import eigenvalue_score, ov_statistics, qk_eigenvalues
    from qkov.trigrams import DEFAULT_MIN_COUNT, head_factors, sample_tokens, skip_trigrams

    n_sources = trigram_sources(model.cfg)
    rows = None if n_sources is None else sample_tokens(model.cfg.d_vocab, n_sources)
    with torch.no_grad():
        # E W_Q and W_O W_U over the vocabulary, formed once for the top-1 fraction and the
        # skip-trigrams (0.37 s each at 128k tokens)
        _, _, factors = next(head_factors(model, [(layer, head)]))
        ov = ov_statistics(model, layer, head, rows=rows, W_OU=factors[1])
        qk = qk_eigenvalues(model, layer, head, gram=None)  # no 7.8 s gram for one head
    min_count = DEFAULT_MIN_COUNT if getattr(model, "token_counts", None) is not None else None
    kw = dict(k=N_TRIGRAMS, per_source=2, n_sources=n_sources, factors=factors)
    try:
        trig = skip_trigrams(model, layer, head, min_count=min_count, **kw)
    except QkovError:  # too few tokens seen that often: rank them all
        min_count = None
        trig = skip_trigrams(model, layer, head, **kw)

    def pairs(eig: torch.Tensor) -> list[list[float]]:
        return [[round(float(z.real), 4), round(float(z.imag), 4)] for z in eig]

    return {
        "qk_eigenvalues": pairs(qk),
        "qk_eigenvalue_score": _finite(eigenvalue_score(qk)),
        "ov_eigenvalues": pairs(ov.eigenvalues),
        "ov_top1_fraction": _finite(ov.top1_fraction),
        "trigram_min_count": min_count,
        # the skip-trigrams and the top-1 fraction: over this many sampled sources (null: all)
        "sampled_sources": n_sources,
        # scores of a model with a final norm are written before it (qkov.circuits.FinalScale)
        "score_units": "logits" if model.cfg.normalization == "none" else "before the final norm",
        "skip_trigrams": [
            {
                "source": t.source_str,
                "destination": t.destination_str,
                "out": t.out_str,
                "score": round(t.score, 4),
            }
            for t in trig
        ],
    }


def _no_tokenizer(name: str) -> str:
    return no_tokenizer(f"model {name}", "text cannot be read through it")


def _check_folders(paths: list[Path]) -> None:
    """Refuse, with one QkovError line, before any folder is loaded: a folder that is no
    checkpoint or has no tokenizer, and folders that together need more memory than is
    available. The explorer holds every model in float32 and, once a request reads it, its
    fold (`qkov.circuits.folded`, kept on the model), so it needs at least the larger of:
    the models loaded before one and that one's load (`folder_size`), at the worst load;
    and all of the models with their folds (`qkov.fold.fold_bytes`)."""
    from qkov.checkpoint import folder_size
    from qkov.fold import fold_bytes
    from qkov.resources import available_memory, size_str

    sizes = [folder_size(p) for p in paths]
    for p, size in zip(paths, sizes, strict=True):
        if not size.has_tokenizer:
            raise QkovError(_no_tokenizer(p.resolve().name))
    held, loading = 0, 0
    for size in sizes:  # loaded in order: the earlier models stay while the next is read
        loading = max(loading, held + size.load_bytes)
        held += 4 * size.cfg.n_params
    need = max(loading, held + sum(fold_bytes(size.cfg) for size in sizes))
    have = available_memory()
    if have is None or need <= have:
        return
    raise QkovError(
        f"exploring {len(paths)} model{'s' * (len(paths) > 1)} takes at least "
        f"{size_str(need)} (each held in float32 with its fold), and "
        f"{size_str(have)} is available: explore fewer at once, or free memory"
    )
