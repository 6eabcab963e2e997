"""`qkov explore`: the Explorer (a text through a model, head panels), its attribution
adapter (exact: the paths sum to the logit), and the JSON API with its refusals, on the
shipped models and on small random ones."""

from __future__ import annotations

import json
import socket

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from starlette.testclient import TestClient  # noqa: E402

from explore_server import raw_get, running_server  # noqa: E402
from factories import general_model, random_model  # noqa: E402
from qkov.circuits import qk_circuit  # noqa: E402
from qkov.eigenvalues import eigenvalue_score  # noqa: E402
from qkov.explore import Explorer  # noqa: E402
from qkov.explore.app import MAX_BODY_BYTES, create_app, is_loopback  # noqa: E402
from qkov.explore.attribution import next_token_attributions  # noqa: E402
from qkov.names import LABELS  # noqa: E402

TEXT = "import os\nimport sys\n\ndef f(x):\n    return x\n\nimport os\n"


@pytest.fixture(scope="module")
def explorer():
    return Explorer.from_dirs([])  # the shipped models


@pytest.fixture(scope="module")
def client(explorer):
    return TestClient(create_app(explorer))


# ---------------------------------------------------------------------------- attribution
@pytest.mark.parametrize(
    "model",
    [
        random_model(2, n_heads=2),
        random_model(1, "standard", normalization="rms"),
        general_model(3),  # MLPs, biases, LayerNorm; chains past max_order go to a remainder
    ],
    ids=["attn-only", "standard-rms", "mlp-ln-bias-3-layers"],
)
def test_attributions_sum_to_the_logit(model):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(model.cfg.d_vocab, (model.cfg.n_ctx,), generator=g)
    targets = torch.randint(model.cfg.d_vocab, (model.cfg.n_ctx,), generator=g)
    out = next_token_attributions(model, tokens, targets, k=3)
    with torch.no_grad():
        want = model(tokens[None])[0].gather(-1, targets[:, None])[:, 0]
    for i, a in enumerate(out):
        assert len(a["paths"]) == 3
        assert a["total"] == pytest.approx(float(want[i]), abs=1e-4)
        assert sum(p["logit"] for p in a["paths"]) + a["rest"] == pytest.approx(a["total"])
        sizes = [abs(p["logit"]) for p in a["paths"]]
        assert sizes == sorted(sizes, reverse=True)
    names = {p["name"] for a in out for p in a["paths"]}
    if model.cfg.n_layers == 3:
        assert any("mlp" in n or n.startswith("order>") or "bias" in n for n in names)


# ---------------------------------------------------------------------------- the API
def test_models_and_page(client, explorer):
    r = client.get("/api/models")
    assert r.status_code == 200
    assert [m["name"] for m in r.json()["models"]] == ["attn2", "attn1", "attn0", "mlp2"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for name in ("explore.js", "explore.css"):
        assert client.get(f"/assets/{name}").status_code == 200
    # the page names no other host
    assert "http" not in page.text and "//" not in page.text.replace("<!--", "")


@pytest.mark.parametrize("name", ["attn2", "attn1", "attn0", "mlp2"])
def test_run_matches_the_model(client, explorer, name):
    r = client.post("/api/run", json={"model": name, "text": TEXT})
    assert r.status_code == 200, r.text
    d = r.json()
    model = explorer.models[name].model
    ids = model.tokenizer.encode(TEXT).ids
    assert d["ids"] == ids and "".join(d["tokens"]) == TEXT
    n, cfg = len(ids), model.cfg
    assert len(d["patterns"]) == cfg.n_layers
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.tensor([ids]))
    for l, layer in enumerate(d["patterns"]):
        assert len(layer) == cfg.n_heads
        for h, rows in enumerate(layer):
            assert [len(r) for r in rows] == list(range(1, n + 1))  # sources 0..i
            want = cache[f"pattern.{l}"][0, h]
            for i, row in enumerate(rows):
                assert row == pytest.approx(want[i, : i + 1].tolist(), abs=1e-3)
    probs = logits[0].softmax(-1)
    c = logits[0]
    for i, p in enumerate(d["predictions"]):
        top = probs[i].topk(5)
        assert [t["id"] for t in p["top"]] == top.indices.tolist()
        t = p["target"]
        assert t["actual"] == (i < n - 1)
        assert t["id"] == (ids[i + 1] if i < n - 1 else p["top"][0]["id"])
        assert t["prob"] == pytest.approx(float(probs[i, t["id"]]), abs=1e-4)
        assert p["attribution"]["total"] == pytest.approx(float(c[i, t["id"]]), abs=2e-3)


def test_model_is_optional(client):
    r = client.post("/api/run", json={"text": "hello"})
    assert r.status_code == 200 and r.json()["model"] == "attn2"


def test_head_panel(client, explorer):
    roles = client.get("/api/heads", params={"model": "attn1"}).json()["heads"]
    n_heads = explorer.models["attn1"].model.cfg.n_heads
    assert [(r["layer"], r["head"]) for r in roles] == [(0, h) for h in range(n_heads)]
    assert all(r["label"] in LABELS for r in roles)
    d = client.get("/api/head", params={"model": "attn1", "layer": 0, "head": 2}).json()
    model = explorer.models["attn1"].model
    qk = qk_circuit(model, 0, 2).eigenvalues
    assert d["qk_eigenvalue_score"] == pytest.approx(eigenvalue_score(qk), abs=1e-3)
    assert len(d["qk_eigenvalues"]) == len(d["ov_eigenvalues"]) == model.cfg.d_head
    assert 1 <= len(d["skip_trigrams"]) <= 8 and d["label"] == roles[2]["label"]
    scores = [t["score"] for t in d["skip_trigrams"]]
    assert scores == sorted(scores, reverse=True)
    # the shipped models have a final (RMS) norm: the scores are written before it
    assert model.cfg.normalization == "rms" and d["score_units"] == "before the final norm"
    assert client.get("/api/heads", params={"model": "attn0"}).json()["heads"] == []
    assert d["sampled_sources"] is None  # 2,048 tokens: every source, exact


def test_progress_names_each_part_of_the_roles_while_it_runs(monkeypatch):
    """/api/progress reports the part of classify_heads that runs now (the roles take a
    minute at 1B), and nothing before or after."""
    import qkov.classification
    from qkov import shipped
    from qkov.checkpoint import load

    ex = Explorer({"m": load(shipped("attn2"))})
    client = TestClient(create_app(ex))
    real, seen = qkov.classification.classify_heads, []

    def spied(model, **kw):
        seen.append(client.get("/api/progress", params={"model": "m"}).json()["stage"])
        log = kw["log"]

        def logged(line):
            log(line)
            seen.append(client.get("/api/progress", params={"model": "m"}).json()["stage"])

        return real(model, **(kw | {"log": logged}))

    monkeypatch.setattr(qkov.classification, "classify_heads", spied)
    before = client.get("/api/progress", params={"model": "m"}).json()
    assert before == {"model": "m", "stage": None, "roles_ready": False}
    assert client.get("/api/heads", params={"model": "m"}).status_code == 200
    assert seen[0] is None  # classify_heads says which part runs
    assert seen[1] == "the model over 16 x 128 tokens (attention patterns)", seen
    assert seen[2] == "head scores and copying scores of 16 heads", seen
    assert any(s.startswith("K-composition into") for s in seen[3:]), seen
    assert seen[-1] == "OV eigenvalues and labels of 16 heads"
    after = client.get("/api/progress", params={"model": "m"}).json()
    assert after == {"model": "m", "stage": None, "roles_ready": True}
    r = client.get("/api/progress", params={"model": "nope"})
    assert r.status_code == 400 and "unknown model" in r.json()["error"]


def test_head_panel_of_a_large_vocabulary_ranks_a_sample(monkeypatch):
    """Over the trigram budget (GPT-2's 50k tokens; forced here) the panel ranks the seeded
    sample of sources analyze uses, says so, and its numbers are those of that sample."""
    from qkov.circuits import ov_circuit
    from qkov.eigenvalues import top1_self_fraction
    from qkov.explore.session import _panel
    from qkov.trigrams import sample_tokens, skip_trigrams

    model = random_model(1, n_heads=2, d_vocab=64)
    monkeypatch.setattr("qkov.budget.TRIGRAM_BUDGET", 64 * model.cfg.d_head * 10)  # 10 of 64
    d = _panel(model, 0, 1)
    assert d["sampled_sources"] == 10
    rows = sample_tokens(64, 10)
    want = top1_self_fraction(ov_circuit(model, 0, 1), rows=rows)
    assert d["ov_top1_fraction"] == pytest.approx(want, abs=1e-4)
    sampled = skip_trigrams(model, 0, 1, k=8, per_source=2, n_sources=10)
    assert [t["source"] for t in d["skip_trigrams"]] == [t.source_str for t in sampled]


def test_predictions_are_never_padding_ids(tmp_path):
    """A Hugging Face model whose vocabulary is padded past its tokenizer (Pythia: 50,304
    ids, 50,277 tokens; here 96 and the tiny BPE's): the top predictions, the last
    position's target and every rank are among the tokenizer's ids (a padding id was shown
    as "[92]"); the probabilities stay the model's softmax over every id."""
    import qkov
    from hf_models import TEXT, hf_model, save_folder, tiny_tokenizer

    model = qkov.load(save_folder(hf_model("gpt2"), tmp_path / "gpt2", tiny_tokenizer()))
    n_known = model.tokenizer.get_vocab_size()
    assert n_known < model.cfg.d_vocab
    with torch.no_grad():
        model.b_U[n_known:] += 5.0  # the padding ids would top every position
    d = TestClient(create_app(Explorer({"gpt2": model}))).post("/api/run", json={"text": TEXT})
    assert d.status_code == 200, d.text
    ids = model.tokenizer.encode(TEXT).ids
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]
    probs = logits.softmax(-1)
    for i, p in enumerate(d.json()["predictions"]):
        assert [t["id"] for t in p["top"]] == logits[i, :n_known].topk(5).indices.tolist()
        assert [t["prob"] for t in p["top"]] == pytest.approx(
            probs[i, [t["id"] for t in p["top"]]].tolist(), abs=1e-4
        )
        t = p["target"]
        assert t["id"] < n_known
        assert t["rank"] == int((logits[i, :n_known] > logits[i, t["id"]]).sum()) + 1


# ---------------------------------------------------------------------------- bad input
BAD = [
    ("empty text", json.dumps({"text": ""}), 400, "empty"),
    ("blank text", json.dumps({"text": "  \n "}), 400, "empty"),
    ("text over n_ctx", json.dumps({"text": "x = 1\n" * 300}), 413, "refused, not truncated"),
    ("invalid JSON", '{"text": "abc"', 400, "not valid JSON"),
    ("not an object", '["text"]', 400, "JSON object"),
    ("text not a string", json.dumps({"text": 3}), 400, "must be a string"),
    ("no text", json.dumps({"model": "attn1"}), 400, "missing"),
    ("unknown field", json.dumps({"text": "a", "temp": 1}), 400, "unknown field"),
    ("unknown model", json.dumps({"model": "gpt9", "text": "a"}), 400, "unknown model"),
    ("body over the limit", json.dumps({"text": "a" * MAX_BODY_BYTES}), 413, "KiB"),
    ("not UTF-8", b'{"text": "\xff"}', 400, "not valid JSON"),
    # valid JSON, but a lone surrogate is no Unicode text (the tokenizer raised: a bare 500)
    ("lone surrogate", b'{"text": "import \\ud800 os"}', 400, "surrogate"),
    ("lone low surrogate", b'{"text": "\\udc00"}', 400, "surrogate"),
]


@pytest.fixture(scope="module")
def server(explorer):
    with running_server(explorer) as base:
        yield base


def _post(base: str, body: str | bytes) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(
        base + "/api/run", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("what,body,status,says", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_json_error_and_the_server_stays_up(server, what, body, status, says):
    got, data = _post(server, body)
    assert got == status, data
    assert says in data["error"] and "\n" not in data["error"]
    assert _post(server, json.dumps({"text": "still up"}))[0] == 200


def test_chunked_body_over_the_limit_is_refused_while_read(server):
    """No Content-Length: the limit is enforced on the stream itself."""
    import http.client

    port = int(server.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    chunks = (b'{"text": "' + b"a" * 8192 for _ in range(20))
    conn.request("POST", "/api/run", body=chunks, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and "KiB" in json.loads(r.read())["error"]
    conn.close()


TRAVERSAL = [
    "/../../etc/passwd",
    "/assets/../../etc/passwd",
    "/assets/..%2f..%2fetc%2fpasswd",
    "/assets/%2e%2e/%2e%2e/etc/passwd",
    "/assets/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/assets/..%5c..%5cetc%5cpasswd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/assets/%252e%252e%252fetc%252fpasswd",
    "/assets/explore.js/../../../etc/passwd",
    "/assets/index.html",
    "/assets/",
    "/etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSAL)
def test_no_file_outside_the_assets(server, path):
    status, body = raw_get(server, path)
    assert status == 404, (path, body[:200])
    assert b"root:" not in body
    assert raw_get(server, "/assets/explore.js")[0] == 200


def test_bad_head_queries(client):
    q = {"model": "attn1", "layer": 5, "head": 0}
    assert client.get("/api/head", params=q).status_code == 404
    assert client.get("/api/head", params={"layer": "x", "head": 0}).status_code == 400
    assert client.get("/api/heads", params={"model": "nope"}).status_code == 400
    assert client.get("/api/run").status_code == 405


# ---------------------------------------------------------------------------- the command
def test_cli_binds_loopback_and_warns_otherwise(monkeypatch, capsys):
    from qkov.cli import main
    from qkov.demo_models import shipped

    calls = []
    monkeypatch.setattr("qkov.explore.app.serve", lambda ex, host, port: calls.append((host, port)))
    assert main(["explore", str(shipped("attn1"))]) == 0
    assert calls[-1] == ("127.0.0.1", 8765)
    err = capsys.readouterr().err
    assert "warning" not in err
    assert err.splitlines() == [f"qkov explore: loading {shipped('attn1')}"]  # what it waits on
    assert main(["explore", "--host", "0.0.0.0", "--port", "9000", str(shipped("attn0"))]) == 0
    assert calls[-1] == ("0.0.0.0", 9000)
    assert "warning: --host 0.0.0.0 is not a loopback address" in capsys.readouterr().err
    assert main(["explore", "--port", "0"]) == 2
    assert main(["explore", "/no/such/run"]) == 2
    with socket.socket() as busy:  # a port in use: one line, exit 2, before loading models
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["explore", "--port", str(busy.getsockname()[1])]) == 2
        assert "choose another --port" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_a_large_model_is_cut_where_the_budget_says(monkeypatch):
    """The explorer's path expansion stops at the attribution budget's cut (GPT-2 small
    would otherwise keep ~145k paths of order <= 2: 19 GB for 48 tokens), and stays exact:
    the remainder carries the rest."""
    from qkov.budget import attribution_max_order
    from qkov.explore.attribution import max_order

    model = general_model(3)
    n = model.cfg.n_ctx
    assert max_order(model, n) == 2  # small: the explorer's own cut
    monkeypatch.setattr("qkov.budget.PATH_BUDGET", 1)
    assert attribution_max_order(model.cfg, n) == 0 and max_order(model, n) == 0
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(model.cfg.d_vocab, (n,), generator=g)
    out = next_token_attributions(model, tokens, tokens, k=40)
    names = {p["name"] for a in out for p in a["paths"]}
    assert "order>0" in names and not any(name.startswith("L") for name in names)
    with torch.no_grad():
        want = model(tokens[None])[0].gather(-1, tokens[:, None])[:, 0]
    for i, a in enumerate(out):
        assert a["total"] == pytest.approx(float(want[i]), abs=1e-4)


# ---------------------------------------------------------------------------- audit regressions
def _gappy_explorer() -> Explorer:
    """A model whose tokenizer lacks most characters (a byte-level BPE trained without the
    byte alphabet and with no unknown token: it silently drops what it cannot spell)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=40, initial_alphabet=[], show_progress=False)
    tok.train_from_iterator(["the cat sat on the mat"] * 4, trainer)
    model = random_model(1, n_heads=2, d_vocab=64)
    model.tokenizer = tok
    return Explorer({"gappy": model})


def test_characters_the_tokenizer_drops_are_refused_not_hidden():
    """Text the tokenizer cannot spell was silently dropped: the page showed a reading of a
    text the user did not type (the reason over-long text is refused, not truncated)."""
    client = TestClient(create_app(_gappy_explorer()))
    ok = client.post("/api/run", json={"text": "the cat sat"})
    assert ok.status_code == 200 and "".join(ok.json()["tokens"]) == "the cat sat"
    for text, shown in [
        ("the \U0001f431 sat", "\U0001f431"),
        ("the\x00cat", "\\x00"),
        ("\u05e9the", "\u05e9"),
        ("the caf\u00e9", "\u00e9"),
    ]:
        r = client.post("/api/run", json={"text": text})
        assert r.status_code == 400, (text, r.text)
        err = r.json()["error"]
        assert "cannot spell" in err and shown in err and "\n" not in err, err


def test_a_client_gone_mid_body_is_no_server_error():
    """A client that disconnects while sending its body: the app answers (to no one) instead
    of raising ClientDisconnect into uvicorn, which logged a traceback per disconnect."""
    import asyncio

    app = create_app(_gappy_explorer())
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/run",
        "raw_path": b"/api/run",
        "query_string": b"",
        "headers": [(b"content-length", b"100")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }
    events = iter(
        [{"type": "http.request", "body": b'{"te', "more_body": True}, {"type": "http.disconnect"}]
    )
    sent = []

    async def receive():
        return next(events)

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # raised ClientDisconnect before the fix
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400


def test_an_unexpected_failure_is_still_a_json_error(monkeypatch, capsys):
    """A bug in the compute (here: a raising run) answers JSON, which the page can show, not
    Starlette's plain-text 500 (the page then said only that the body is not JSON)."""
    ex = _gappy_explorer()

    def broken(*args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(ex, "run", broken)
    client = TestClient(create_app(ex), raise_server_exceptions=False)
    r = client.post("/api/run", json={"text": "the cat"})
    assert r.status_code == 500
    assert r.json()["error"].startswith("internal error (RuntimeError: boom)")
    assert "Traceback" in capsys.readouterr().err
    assert client.post("/api/run", json={"text": "the"}).status_code == 500  # still answers


def _held_explorer():
    """An Explorer over a random model (with attn1's tokenizer) whose /api/heads holds the
    one compute thread until `release` is set (`started` says it holds it), and whose runs
    record their texts in `computed`."""
    import threading

    from qkov import shipped
    from qkov.checkpoint import load_tokenizer

    tok = load_tokenizer(shipped("attn1") / "tokenizer.json")
    model = random_model(1, n_heads=2, d_vocab=tok.get_vocab_size())
    model.tokenizer = tok
    ex = Explorer({"m": model})
    release, started, computed = threading.Event(), threading.Event(), []

    def slow_roles(model):
        started.set()
        release.wait(120)
        return {"model": "m", "heads": []}

    run = ex.run

    def recorded_run(model, text):
        computed.append(text)
        return run(model, text)

    ex.roles, ex.run = slow_roles, recorded_run
    return ex, started, release, computed


def test_a_bad_request_is_refused_while_the_worker_is_busy():
    """The one compute thread busy (a slow /api/heads, held here until released): a request
    for an unknown model, a head that does not exist or an empty text is answered at once,
    not after the slow work (README: checked before any work), and so is /api/progress."""
    import threading
    import urllib.error
    import urllib.request

    ex, started, release, _ = _held_explorer()
    with running_server(ex) as base:
        busy = threading.Thread(
            target=lambda: urllib.request.urlopen(base + "/api/heads?model=m", timeout=150).read()
        )
        busy.start()
        assert started.wait(60)  # the worker is now held
        answers = []

        def ask():
            for url in ("/api/heads?model=nope", "/api/head?model=m&layer=5&head=0"):
                try:
                    urllib.request.urlopen(base + url, timeout=150)
                except urllib.error.HTTPError as e:
                    answers.append((e.code, json.loads(e.read())["error"]))
            answers.append(_post(base, json.dumps({"model": "m", "text": "  "})))
            with urllib.request.urlopen(base + "/api/progress?model=m", timeout=150) as r:
                answers.append((r.status, json.loads(r.read())))

        asker = threading.Thread(target=ask)
        asker.start()
        asker.join(60)
        done_while_busy = not asker.is_alive()
        release.set()
        busy.join(60)
        asker.join(60)
    assert done_while_busy, "a bad request waited behind the busy worker"
    assert [a[0] for a in answers] == [400, 404, 400, 200]
    assert "unknown model" in answers[0][1] and "no head L5H0" in answers[1][1]
    assert "empty" in answers[2][1]["error"]
    assert answers[3][1]["roles_ready"] is False  # progress too is answered at once


def test_a_queued_request_whose_client_left_is_not_computed():
    """The one compute thread busy (a slow /api/heads, held until released): a /api/run
    queued behind it whose client then disconnects (the page aborts a run when the text is
    retyped) is dropped, never computed; a client still waiting gets its answer."""
    import logging
    import threading
    import urllib.request

    ex, started, release, computed = _held_explorer()
    skipped = threading.Event()

    class OnSkip(logging.Handler):  # the app logs each request it drops
        def emit(self, record):
            if "not computed: its client disconnected" in record.getMessage():
                skipped.set()

    log, handler = logging.getLogger("qkov.explore"), OnSkip()
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with running_server(ex) as base:
            busy = threading.Thread(
                target=lambda: urllib.request.urlopen(
                    base + "/api/heads?model=m", timeout=150
                ).read()
            )
            busy.start()
            assert started.wait(60)  # the worker is now held
            body = json.dumps({"model": "m", "text": "gone"}).encode()
            port = int(base.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=60) as gone:
                gone.sendall(
                    b"POST /api/run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                    b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            answers = []
            waiting = threading.Thread(
                target=lambda: answers.append(
                    _post(base, json.dumps({"model": "m", "text": "stays"}))
                )
            )
            waiting.start()
            dropped = skipped.wait(60)
            release.set()
            busy.join(60)
            waiting.join(60)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert computed == ["stays"]  # ["gone", "stays"] before the fix
    assert dropped  # and the app logged it
    status, data = answers[0]
    assert status == 200 and data["ids"] == ex.models["m"].model.tokenizer.encode("stays").ids


def test_models_that_do_not_fit_together_are_refused_before_any_loads(tmp_path, monkeypatch):
    """Each model fits alone, the three together do not: the explorer refuses them with one
    line before reading a weight (it holds every model in float32 with its fold, which the
    model keeps once a request has read it)."""
    import qkov.checkpoint
    from hf_models import D_VOCAB, tiny_tokenizer
    from qkov import QkovError
    from qkov.checkpoint import folder_size, save_model
    from qkov.cli import main
    from qkov.fold import fold_bytes

    dirs = []
    for i, d_model in enumerate((24, 24, 48)):
        model = general_model(d_model=d_model, d_vocab=D_VOCAB, seed=i)
        model.tokenizer = tiny_tokenizer()
        save_model(model, tmp_path / f"m{i}")
        dirs.append(tmp_path / f"m{i}")
    sizes = [folder_size(d) for d in dirs]
    held = [4 * s.cfg.n_params for s in sizes]
    folds = [fold_bytes(s.cfg) for s in sizes]
    assert min(folds) > 0  # layernorm models: the fold writes every weight
    loading = max(sum(held[:i]) + s.load_bytes for i, s in enumerate(sizes))
    need = max(loading, sum(held) + sum(folds))
    assert all(
        max(s.load_bytes, h + f) < need - 1 for s, h, f in zip(sizes, held, folds, strict=True)
    )
    loads = []
    real_load = qkov.checkpoint.load
    monkeypatch.setattr(
        qkov.checkpoint, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k)
    )
    monkeypatch.setattr("qkov.resources.available_memory", lambda device="cpu": need - 1)
    with pytest.raises(
        QkovError, match=r"^exploring 3 models takes at least .* available: explore fewer"
    ):
        Explorer.from_dirs(dirs)
    assert loads == []
    assert len(Explorer.from_dirs(dirs[:2]).models) == 2  # two fit
    assert main(["explore", *map(str, dirs), "--port", "0"]) == 2  # before a port is opened
    monkeypatch.setattr("qkov.resources.available_memory", lambda device="cpu": need)
    explorer = Explorer.from_dirs(dirs)
    assert len(explorer.models) == 3
    from qkov.circuits import folded

    kept = [folded(m.model) for m in explorer.models.values()]  # what a request folds
    assert all(folded(m.model) is f for m, f in zip(explorer.models.values(), kept, strict=True))
    (dirs[2] / "tokenizer.json").unlink()  # no text can be read through it: refused first
    loads.clear()
    with pytest.raises(QkovError, match=r"^model m2 has no tokenizer.json"):
        Explorer.from_dirs(dirs)
    assert loads == []
