"""`qkov heads` on a GPT-2-small-shaped model with an induction circuit planted by hand: are
the planted heads found, with their partner, and how long does it take?

    python benchmarks/planted_scale.py [--keep DIR]

The model (12 layers x 12 heads, d_model 768, d_head 64, MLPs of 3,072 with gelu, LayerNorm,
biases, learned positions in the stream, vocabulary 50,257, n_ctx 1024) has random weights
everywhere (std 0.02; biases N(0, 0.02), norm weights 1 + N(0, 0.02)), and on top of them,
in disjoint 64-dimensional subspaces of the residual stream:

    T [0, 64)     token identity: each token's random Gaussian code (norm ~16), in W_E
    P [64, 128)   position: 32 sinusoids of random frequencies (norm 16), in W_pos
    S [128, 192)  the previous token's code, written by the previous-token head
    O [192, 256)  the next token's code, written by the induction heads and read by W_U

    L2H3              previous-token head: its query rotates the position code one step
                      back (p_i -> p_{i-1}: a linear map for sinusoids), its key reads it
                      as is; its OV copies T into S.
    L5H1, L6H9, L7H2  induction heads: query reads T (the current token), key reads S (the
                      previous token at the source: K-composition with L2H3); OV copies T
                      into O, which W_U reads with the same codes.

The codes are not one-hot (50,257 tokens in 64 dimensions): a token's code matches its own
(dot ~256) far above another's (~N(0, 32^2)). The planted parts dominate the stream (its
RMS, measured: 0.82 before L2H3 writes, 1.00-1.04 in layers 3-7), so LayerNorm divides by
about 1 and the gains below act about as written.

The model is saved as a qkov checkpoint (no tokenizer: `qkov heads` then evaluates on the
random-token probe), `qkov heads DIR --json` runs on it in a child process under
/usr/bin/time -v, and each planted head's label and score, its top K-composition and
knock-out partners, whether the budget cut the knock-outs, and the child's wall time and
peak RSS are printed. Exit 1 if a planted head is mislabelled or an induction head's top
partner (by K-composition or by knock-out) is not the previous-token head.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from qkov import ModelConfig, Transformer, save_model

CONFIG = ModelConfig(
    n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257,
    positional="standard", normalization="layernorm", act_fn="gelu", bias=True,
    init_std=0.02,
)  # fmt: skip
R = 64  # width of each planted subspace (= d_head)
T, P, S, O = (slice(i * R, (i + 1) * R) for i in range(4))
PREVIOUS = (2, 3)
INDUCTION = ((5, 1), (6, 9), (7, 2))
TOKEN_NORM = 16.0  # norm of a token's code in T
POSITION_NORM = 16.0  # norm of a position's code in P
# Gains (attention scores are scaled by 1/sqrt(d_head) = 1/8; LayerNorm divides what each
# head reads by the stream's RMS, ~0.82 at layer 2 and ~1.0 in layers 5-7):
PREV_QK = 0.75  # L2H3's W_Q, W_K gain on P: score at i-1 ~ 0.75^2 * 256 / 0.82^2 / 8 = 27
PREV_OV = 0.75  # L2H3's W_V gain: S holds ~0.75 / 0.82 x the previous token's code
INDUCTION_QK = 1.0  # W_Q gain on T, W_K 1 / PREV_OV on S: a match scores ~256 / 0.82 / 8 = 39
INDUCTION_OV = 0.25  # W_O gain into O: each head writes 0.25 x the next token's code
UNEMBED = 1.0  # W_U reads O with the token codes


@torch.no_grad()
def planted_model(seed: int = 0) -> Transformer:
    """CONFIG's random model with the previous-token head PREVIOUS and the induction heads
    INDUCTION planted on top of its weights (see the module docstring)."""
    model = Transformer(CONFIG)
    g = torch.Generator().manual_seed(seed + 1)
    w = {k: v.clone() for k, v in model.weights().items()}
    for name, x in w.items():  # the constructor starts biases at 0 and norm weights at 1
        if name.startswith("b_") or name.endswith("_b"):
            x.copy_(0.02 * torch.randn(x.shape, generator=g))
        elif name.endswith("_w"):
            x.add_(0.02 * torch.randn(x.shape, generator=g))
    codes = torch.randn(CONFIG.d_vocab, R, generator=g) * (TOKEN_NORM / math.sqrt(R))
    w["W_E"][:, T] += codes  # [d_vocab, R]
    w["W_U"][O, :] += UNEMBED * codes.T  # [R, d_vocab]
    # Position i's code: (cos w_k i, sin w_k i) pairs; one step back is a rotation by -w_k.
    freq = torch.rand(R // 2, generator=g) * math.pi  # [R/2]
    angle = torch.arange(CONFIG.n_ctx)[:, None] * freq  # [n_ctx, R/2]
    amp = POSITION_NORM / math.sqrt(R // 2)
    w["W_pos"][:, P] += amp * torch.stack([angle.cos(), angle.sin()], -1).flatten(1)
    back = torch.zeros(R, R)  # row-vector rotation: [cos, sin] @ back = [cos(a-w), sin(a-w)]
    for k, f in enumerate(freq.tolist()):
        back[2 * k : 2 * k + 2, 2 * k : 2 * k + 2] = torch.tensor(
            [[math.cos(f), -math.sin(f)], [math.sin(f), math.cos(f)]]
        )
    eye = torch.eye(R)
    l, h = PREVIOUS
    w["W_Q"][l, h][P] += PREV_QK * back  # [R (P), d_head]
    w["W_K"][l, h][P] += PREV_QK * eye
    w["W_V"][l, h][T] += PREV_OV * eye
    w["W_O"][l, h][:, S] += eye  # [d_head, R (S)]
    for l, h in INDUCTION:
        w["W_Q"][l, h][T] += INDUCTION_QK * eye
        w["W_K"][l, h][S] += INDUCTION_QK / PREV_OV * eye
        w["W_V"][l, h][T] += eye
        w["W_O"][l, h][:, O] += INDUCTION_OV * eye
    model.load_weights(w)
    return model.eval()


def run_heads(folder: Path) -> tuple[dict, str, float, float]:
    """`qkov heads folder --json` in a child under /usr/bin/time -v: (its JSON, its stdout,
    wall seconds, peak RSS in GB). Its stderr (progress) passes through."""
    out = folder / "heads.json"
    cmd = [sys.executable, "-m", "qkov", "heads", str(folder), "--json", str(out)]
    with tempfile.NamedTemporaryFile("r", suffix=".time") as f:
        done = subprocess.run(["/usr/bin/time", "-v", "-o", f.name, *cmd], stdout=subprocess.PIPE)
        usage = dict(line.strip().rsplit(": ", 1) for line in f if ": " in line)
    stdout = done.stdout.decode()
    if done.returncode != 0:
        print(stdout)
        raise SystemExit(f"qkov heads failed (exit {done.returncode})")
    h, m, s = (["0", "0"] + usage["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":"))[-3:]
    wall = 3600 * int(h) + 60 * int(m) + float(s)
    peak_gb = int(usage["Maximum resident set size (kbytes)"]) / 2**20
    return json.loads(out.read_text()), stdout, wall, peak_gb


def check(result: dict, stdout: str) -> list[str]:
    """Print each planted head's findings; return what is wrong (empty: all found)."""
    cls = result["classification"]
    records = {(r["layer"], r["head"]): r for r in cls["records"]}
    prev = "L{}H{}".format(*PREVIOUS)
    wrong = []
    r = records[PREVIOUS]
    print(f"{prev}: label {r['label']}, previous_token {r['scores']['previous_token']:.3f}")
    if r["label"] != "previous_token":
        wrong.append(f"{prev} is labelled {r['label']}, not previous_token")
    for l, h in INDUCTION:
        r, name = records[l, h], f"L{l}H{h}"
        k = r["k_composition"][0] if r["k_composition"] else None
        ko = r["knockout"][0] if r["knockout"] else None
        kname = f"L{k['layer']}H{k['head']}" if k else "none"
        koname = f"L{ko['layer']}H{ko['head']}" if ko else "none"
        print(
            f"{name}: label {r['label']}, induction {r['scores']['induction']:.3f}; top "
            f"K-composition partner {kname}"
            + (f" (score {k['score']:.3f}, z={k['z']:.1f})" if k else "")
            + f"; top knock-out partner {koname}"
            + (f" (drop {ko['drop']:.3f}, of {len(r['knockout'])} knocked out)" if ko else "")
        )
        if r["label"] != "induction":
            wrong.append(f"{name} is labelled {r['label']}, not induction")
        if kname != prev or not k["above_baseline"]:
            wrong.append(
                f"{name}'s top K-composition partner is {kname}, not {prev} above baseline"
            )
        if koname != prev:
            wrong.append(f"{name}'s top knock-out partner is {koname}, not {prev}")
    others = [
        f"L{r['layer']}H{r['head']} {r['label']}"
        for r in cls["records"]
        if r["label"] in ("previous_token", "induction")
        and (r["layer"], r["head"]) not in (PREVIOUS, *INDUCTION)
    ]
    print(f"other heads labelled previous_token or induction: {', '.join(others) or 'none'}")
    cut = cls["knockout_heads"]
    said = "knock-outs over the budget" in stdout
    print(
        "knock-outs cut by the budget: "
        + (f"yes, {len(cut)} earlier heads knocked out" if cut is not None else "no")
        + f" (the table {'says' if said else 'does not say'} 'knock-outs over the budget')"
    )
    if said != (cut is not None):
        wrong.append("the table's budget note disagrees with knockout_heads in the JSON")
    return wrong


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="write the checkpoint here (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qkov-planted-") as tmp:
        folder = args.keep or Path(tmp) / "planted"
        save_model(planted_model(), folder)
        print(
            f"# GPT-2-small-shaped model, previous-token head L{PREVIOUS[0]}H{PREVIOUS[1]}, "
            f"induction heads {', '.join(f'L{l}H{h}' for l, h in INDUCTION)}; torch "
            f"{torch.__version__}"
        )
        result, stdout, wall, peak_gb = run_heads(folder)
    wrong = check(result, stdout)
    print(f"qkov heads: wall time {wall:.1f} s, peak RSS {peak_gb:.2f} GB")
    if wrong:
        print("FAILED: " + "; ".join(wrong))
        return 1
    print("every planted head found, with its partner")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
