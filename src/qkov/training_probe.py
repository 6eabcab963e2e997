"""The training probe: a cheap phase-change probe logged in metrics.jsonl while training.

Its numbers are on the fixed random-token probe, not on text, and are named so everywhere
(probe_induction_score, probe_previous_token_score and the head it is of,
probe_previous_token_head, probe_icl_score): the ICL score on
held-out text is `qkov.icl.icl_score`. With two layers or more it also logs the induction
circuit's weight statistics (`qkov.induction_circuit`) under the same prefix:
probe_k_composition, probe_qk_eigenvalue, probe_ov_eigenvalue, and the two heads they are of
(probe_induction_head, probe_partner_head). Then the peers' repetition test on its own
batch (`qkov.repetition.repetition_record`, keys repetition_*): the loss on each half of 10
random blocks of 50 repeated once, the in-context learning the induction heads buy."""

from __future__ import annotations

import math

import torch

from qkov.data.probes import default_seq_len, induction_probe
from qkov.data.tokenizer import start_ids
from qkov.heads import induction_score, previous_token_score
from qkov.icl import icl_from_logits
from qkov.induction_circuit import Head, induction_circuit
from qkov.model import AttnOnlyTransformer
from qkov.repetition import repetition_record, top_heads


def training_probe(
    model: AttnOnlyTransformer,
    seed: int = 0,
    repetition: bool = True,
    head: Head | None = None,
    partner: Head | None = None,
) -> dict[str, float | str | None]:
    """On a fixed `induction_probe` batch of 8 sequences of min(64, n_ctx) tokens: the best
    induction and previous-token scores over heads, and the ICL score on the same batch
    (loss late, inside the repeated block, minus loss early, before it: about
    -log(d_vocab) once induction works). NaN where there is no head (0 layers).
    repetition: also the peers' repetition test (`repetition_record`, seed `seed`), the
    repeated half's loss along training. head, partner: the circuit's heads, pinned
    (`induction_circuit`); by default the best head and its chosen partner."""
    cfg = model.cfg
    prefix = start_ids(getattr(model, "tokenizer", None))  # as a text would start (Llama's BOS)
    probe = induction_probe(cfg.d_vocab, 8, default_seq_len(cfg.n_ctx, cap=64), seed, prefix)
    tokens = probe.tokens.to(model.device)
    with torch.no_grad():
        logits, cache = model.run_with_hooks(tokens, cache_names=lambda n: n.startswith("pattern."))
        A = [cache[f"pattern.{l}"] for l in range(cfg.n_layers)]
        per_head = [induction_score(a, tokens, probe.half_lens).cpu() for a in A]
        prev_per_head = [previous_token_score(a).cpu() for a in A]
        ind = max((float(s.max()) for s in per_head), default=math.nan)
        icl = icl_from_logits(logits, tokens)
    out: dict[str, float | str] = {
        "probe_induction_score": ind,
        "probe_previous_token_score": math.nan,
        "probe_icl_score": icl.score,
    }
    if cfg.n_layers:  # the best previous-token head: in the last layer, no induction head
        prev = torch.stack(prev_per_head)  # can read it (the layer matters, not only the score)
        ((l, h, score),) = top_heads(prev, 1)
        out["probe_previous_token_score"] = score
        out["probe_previous_token_head"] = f"L{l}H{h}"
    if cfg.n_layers >= 2:
        circuit = induction_circuit(model, torch.stack(per_head), prev, head, partner)
        out.update({f"probe_{k}": v for k, v in circuit.items()})
    if repetition:
        out.update(repetition_record(model, seed))
    return out
