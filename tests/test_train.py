import dataclasses
import json
import random

import pytest
import torch

from qkov import ModelConfig, QkovError, load
from qkov.data import prepare
from qkov.train import TrainConfig, train

CFG = ModelConfig(n_layers=2, n_heads=2, d_model=16, n_ctx=16, d_vocab=300)


def small_tc(**kw) -> TrainConfig:
    base = dict(
        steps=20, batch_size=4, lr=1e-2, warmup=5, eval_interval=5, eval_batches=2, ckpt_interval=5
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data(tiny_corpus, tmp_path_factory):
    return prepare(str(tiny_corpus), vocab_size=300, cache_dir=tmp_path_factory.mktemp("c"))


def test_resume_equals_straight_run(data, tmp_path):
    straight = train(CFG, small_tc(), tmp_path / "a", progress=False, data=data)
    train(CFG, small_tc(), tmp_path / "b", stop_after=10, progress=False, data=data)
    assert json.loads((tmp_path / "b/metrics.jsonl").read_text().splitlines()[-1])["step"] == 10
    resumed = train(None, small_tc(), tmp_path / "b", resume=True, progress=False, data=data)
    for name, w in straight.weights().items():
        assert (w - resumed.weights()[name]).abs().max() <= 1e-6, name
    steps = [json.loads(x)["step"] for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]


def test_same_seed_same_weights_and_loss_falls(data, tmp_path):
    a = train(CFG, small_tc(), tmp_path / "a", progress=False, data=data)
    b = train(CFG, small_tc(), tmp_path / "b", progress=False, data=data)
    for name, w in a.weights().items():
        assert torch.equal(w, b.weights()[name]), name
    recs = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]
    assert {"step", "tokens", "train_loss", "val_loss", "lr", "tokens_per_s"} <= set(recs[0])


def test_run_directory_is_loadable(data, tmp_path):
    trained = train(CFG, small_tc(steps=5), tmp_path / "run", progress=False, data=data)
    for f in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
        "train_state.safetensors",
        "train_config.json",
        "versions.json",
    ):
        assert (tmp_path / "run" / f).is_file(), f
    loaded = load(tmp_path / "run")
    assert loaded.tokenizer.get_vocab_size() == 300
    tokens = torch.randint(0, 300, (1, 16))
    torch.testing.assert_close(loaded(tokens), trained(tokens))
    assert json.loads((tmp_path / "run/versions.json").read_text())["torch"] == torch.__version__


def test_refuses_to_overwrite_and_resume_without_run(data, tmp_path):
    train(CFG, small_tc(steps=5), tmp_path / "run", progress=False, data=data)
    with pytest.raises(QkovError, match="already holds a training run"):
        train(CFG, small_tc(steps=5), tmp_path / "run", progress=False, data=data)
    with pytest.raises(QkovError, match="cannot resume"):
        train(None, small_tc(), tmp_path / "none", resume=True, progress=False, data=data)


def test_nan_loss_stops_and_keeps_last_checkpoint(data, tmp_path):
    train(CFG, small_tc(steps=20), tmp_path / "run", stop_after=5, progress=False, data=data)
    before = (tmp_path / "run/model.safetensors").read_bytes()
    with pytest.raises(QkovError, match=r"loss became (nan|inf) at step 5"):
        _train_diverging(tmp_path / "run", data)
    assert (tmp_path / "run/model.safetensors").read_bytes() == before


def _train_diverging(out, data):
    """Resume a run after poisoning W_U with inf, so the first loss is not finite."""

    from qkov import train as train_mod

    orig = train_mod.restore_state

    def restore_then_poison(model, opt, path):
        step = orig(model, opt, path)
        with torch.no_grad():
            model.W_U.fill_(float("inf"))
        return step

    train_mod.restore_state = restore_then_poison
    try:
        train(None, small_tc(), out, resume=True, progress=False, data=data)
    finally:
        train_mod.restore_state = orig


def test_lr_schedule():
    tc = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert tc.lr_at(0) == pytest.approx(0.1)
    assert tc.lr_at(9) == pytest.approx(1.0)
    assert tc.lr_at(100) == pytest.approx(0.1)
    assert tc.lr_at(55) == pytest.approx(0.55)


def test_train_config_validation():
    with pytest.raises(QkovError, match="--steps must be a positive integer"):
        TrainConfig(steps=0)
    with pytest.raises(QkovError, match="--lr must be a positive"):
        TrainConfig(lr=-1.0)


def test_init_from_starts_at_the_given_weights(data, tmp_path):
    """--init-from: step 0 of the new run holds the source's weights; then it trains on."""
    src = train(CFG, small_tc(steps=10), tmp_path / "base", progress=False, data=data)
    tc = small_tc(steps=5, lr=1e-2, init_from=str(tmp_path / "base"), seed=1)
    zero = train(
        None, dataclasses.replace(tc, lr=1e-12), tmp_path / "same", progress=False, data=data
    )
    for name, w in src.weights().items():
        torch.testing.assert_close(zero.weights()[name], w, atol=1e-8, rtol=0)
    tuned = train(None, tc, tmp_path / "tuned", progress=False, data=data)
    assert not torch.equal(tuned.W_Q, src.W_Q)
    saved = json.loads((tmp_path / "tuned/train_config.json").read_text())
    assert saved["init_from"] == str(tmp_path / "base")
    assert load(tmp_path / "tuned").cfg == src.cfg
    # A resumed fine-tune continues from its own state, not from the source again.
    train(
        None,
        dataclasses.replace(tc, steps=10),
        tmp_path / "tuned",
        resume=True,
        progress=False,
        data=data,
    )


def test_init_from_refuses_other_shapes_and_tokenizers(data, tmp_path, tiny_corpus):
    train(CFG, small_tc(steps=5), tmp_path / "base", progress=False, data=data)
    tc = small_tc(steps=5, init_from=str(tmp_path / "base"))
    other = dataclasses.replace(CFG, d_model=32)
    with pytest.raises(QkovError, match="drop the model flags"):
        train(other, tc, tmp_path / "x", progress=False, data=data)
    data2 = prepare(str(tiny_corpus), vocab_size=280, cache_dir=tmp_path / "c2")
    with pytest.raises(QkovError, match="d_vocab=300 but the corpus tokenizer has 280"):
        train(None, tc, tmp_path / "y", progress=False, data=data2)
    other_corpus = tmp_path / "other"
    other_corpus.mkdir()
    rng = random.Random(1)
    for i in range(20):
        words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=5)) for _ in range(300)]
        (other_corpus / f"t{i}.txt").write_text(" ".join(words))
    data3 = prepare(str(other_corpus), vocab_size=300, cache_dir=tmp_path / "c3")
    assert data3.d_vocab == 300
    with pytest.raises(QkovError, match="trained with another tokenizer"):
        train(None, tc, tmp_path / "w", progress=False, data=data3)
    assert not any((tmp_path / d).exists() for d in ("x", "y", "w"))
    with pytest.raises(QkovError, match="does not exist"):
        train(None, small_tc(init_from=str(tmp_path / "nope")), tmp_path / "z", data=data)
    with pytest.raises(QkovError, match="--min-lr-ratio must be in"):
        TrainConfig(min_lr_ratio=1.5)
