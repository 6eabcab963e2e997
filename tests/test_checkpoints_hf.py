"""Public-checkpoint folders (GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen2) load into qkov
with transformers' logits: tiny random models built offline, saved with save_pretrained
(single file, sharded, bf16), read by qkov.load with safetensors alone."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import qkov
from factories import add_start_token
from hf_models import FAMILIES, TEXT, hf_logits, hf_model, save_folder, tiny_tokenizer
from qkov.circuits import ov_circuit, qk_circuit
from qkov.errors import QkovError
from qkov.heads import head_scores
from qkov.rotary import inverse_frequencies


def _tokens(model, n: int = 20, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(model.config.vocab_size, (batch, n), generator=g)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_equal_transformers(family, tmp_path):
    hf = hf_model(family)
    folder = save_folder(hf, tmp_path / family, tiny_tokenizer())
    model = qkov.load(folder)
    tokens = _tokens(hf)
    expected = hf_logits(hf, tokens)
    assert model.W_E.dtype == torch.float32
    torch.testing.assert_close(model(tokens), expected, atol=1e-4, rtol=0)
    logits, cache = model.run_with_cache(tokens)  # the hooked forward pass agrees too
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox_sequential", "llama_mqa_bias_tied"])
def test_a_tied_unembedding_loaded_for_analysis_is_the_embeddings_storage(family, tmp_path):
    """A folder without an lm_head of its own (tie_word_embeddings): loaded for analysis,
    W_U is W_E's storage transposed (no copy: 1.05 GB at Llama 3.2 1B), with transformers'
    logits, the same analyses as the copy, and saved apart; a plain load keeps a copy, and
    an untied folder's W_U is its own."""
    hf = hf_model(family)
    folder = save_folder(hf, tmp_path / family, tiny_tokenizer())
    tokens = _tokens(hf)
    read, copy = qkov.load(folder, for_analysis=True), qkov.load(folder)
    assert read.W_U.data_ptr() == read.W_E.data_ptr() and torch.equal(read.W_U, copy.W_U)
    assert copy.W_U.data_ptr() != copy.W_E.data_ptr()
    torch.testing.assert_close(read(tokens), hf_logits(hf, tokens), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        ov_circuit(read, 1, 0).eigenvalues, ov_circuit(copy, 1, 0).eigenvalues
    )
    qkov.save_model(read, tmp_path / "saved")
    again = qkov.load(tmp_path / "saved")
    assert torch.equal(again.W_U, copy.W_U) and again.W_U.data_ptr() != again.W_E.data_ptr()
    untied = qkov.load(save_folder(hf_model("gpt2_untied"), tmp_path / "u"), for_analysis=True)
    assert untied.W_U.data_ptr() != untied.W_E.data_ptr()


@pytest.mark.parametrize("family", ["gpt2_untied", "gpt_neox", "llama"])
def test_sharded_folder_loads_the_same_model(family, tmp_path):
    hf = hf_model(family)
    folder = save_folder(hf, tmp_path / family, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 2
    tokens = _tokens(hf)
    torch.testing.assert_close(qkov.load(folder)(tokens), hf_logits(hf, tokens), atol=1e-4, rtol=0)


def test_tokenizer_round_trips(tmp_path):
    tok = tiny_tokenizer()
    folder = save_folder(hf_model("gpt2"), tmp_path / "gpt2", tok)
    model = qkov.load(folder)
    ids = model.tokenizer.encode(TEXT).ids
    from transformers import PreTrainedTokenizerFast

    reference = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    assert ids == reference(TEXT)["input_ids"]
    assert model.tokenizer.decode(ids) == TEXT
    assert model(torch.tensor([ids])).shape == (1, len(ids), model.cfg.d_vocab)


def test_info_describes_a_folder_from_its_headers(tmp_path, monkeypatch, capsys):
    """`qkov info` on a sharded bf16 folder: the config qkov.load would build, the stored
    dtype and files, and no weight read (a 1B folder took 7 s to load for this)."""
    from qkov.cli import main

    hf = hf_model("llama").to(torch.bfloat16)
    folder = save_folder(hf, tmp_path / "llama", tiny_tokenizer(), max_shard_size="20KB")
    n_files = len(list(folder.glob("model-*-of-*.safetensors")))
    cfg = qkov.load(folder).cfg

    def no_read(*args, **kwargs):
        raise AssertionError("qkov info read the weights")

    monkeypatch.setattr(qkov.hf, "read_tensors", no_read)
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    rows = dict(line.split(None, 1) for line in out.splitlines()[1:])
    assert "Hugging Face llama folder" in out.splitlines()[0]
    assert rows["n_layers"] == str(cfg.n_layers) and rows["n_kv_heads"] == str(cfg.n_kv_heads)
    assert rows["params"] == f"{cfg.n_params:,}"
    assert rows["stored"].startswith(f"BF16 in {n_files} files")
    assert rows["tokenizer"] == f"{tiny_tokenizer().get_vocab_size():,} tokens"
    assert "seed" not in rows and "init_std" not in rows  # how qkov trains, not this model's
    folder_info = qkov.hf.inspect_hf(folder)
    load_kb, analyse_kb = folder_info.load_bytes(torch.float32), folder_info.analysis_bytes()
    assert rows["memory"].startswith(
        f"{load_kb / 1e3:.1f} kB to load, at least {analyse_kb / 1e3:.1f} kB to analyse"
    )  # a tiny folder: kB, as every size qkov prints is
    # A tokenizer that puts <s> in front of every text (Llama's) says so: the random-token
    # tests put it in front of every row (qkov.data.tokenizer.start_ids)
    tok = tiny_tokenizer()
    add_start_token(tok, "<s>")
    tok.save(str(folder / "tokenizer.json"))
    assert main(["info", str(folder)]) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines()[1:])
    assert rows["tokenizer"] == f"{tok.get_vocab_size():,} tokens, <s> in front of every text"


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "qwen2"])
def test_bf16_folder_loads_and_every_analysis_runs(family, tmp_path):
    hf = hf_model(family).to(torch.bfloat16)
    folder = save_folder(hf, tmp_path / family)
    # Upcast (the default): exactly the bf16 weights, computed in fp32.
    model = qkov.load(folder)
    tokens = _tokens(hf)
    # The reference reloads the folder in fp32 (hf.float() would keep bf16-rounded rotary
    # frequencies, a buffer .to(bfloat16) rounded).
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    reference.config._attn_implementation = "eager"
    torch.testing.assert_close(model(tokens), hf_logits(reference, tokens), atol=1e-4, rtol=0)
    # Kept in bf16: circuits, eigenvalues (through fp32) and head scores still compute.
    kept = qkov.hf.load_hf(folder, dtype=None)
    assert kept.W_E.dtype == torch.bfloat16
    for m in (model, kept):
        ov, qk = ov_circuit(m, 1, 2), qk_circuit(m, 0, 1)
        eig = ov.eigenvalues
        assert eig.shape == (m.cfg.d_head,) and torch.isfinite(torch.view_as_real(eig)).all()
        assert torch.isfinite(qk.eigenvalues.real).all()
        scores = head_scores(m)
        assert torch.isfinite(scores.induction).all()
    # bf16 eigenvalues agree with the fp32 ones of the same weights, to bf16 precision.
    a = ov_circuit(model, 1, 2).eigenvalues
    b = ov_circuit(kept, 1, 2).eigenvalues
    scale = float(a.abs().max())
    from factories import match_multisets

    match_multisets(b, a, tol=0.05 * scale)


@pytest.mark.parametrize("family", ["llama", "llama3_rope"])
def test_rotary_qk_circuit_at_an_offset_is_the_models_score(family, tmp_path):
    """Layer 0 of a rotary model: the token QK circuit at offset s - p equals the score the
    model computes between those tokens at those positions (no bias, no norm: llama folded
    to weightless rms, each token read over its own RMS, as layer 0 reads it), with the
    checkpoint's rescaled frequencies too."""
    model = qkov.load(save_folder(hf_model(family), tmp_path / family))
    tokens = torch.tensor([[5, 17, 3, 40, 11, 29, 8]])
    _, cache = model.run_with_cache(tokens)
    scores = cache["scores.0"][0] * model.cfg.d_head**0.5  # [head, dest, src], unscaled
    for head in (0, 3):
        for p, s in ((6, 6), (6, 2), (4, 0), (5, 4)):
            circuit = qk_circuit(model, 0, head, offset=s - p)
            expected = circuit[int(tokens[0, p]), int(tokens[0, s])]
            torch.testing.assert_close(scores[head, p, s], expected, atol=1e-4, rtol=1e-4)
    # Offset 0 is the plain W_Q W_K^T; another offset is not.
    a, b = qk_circuit(model, 0, 1).dense(), qk_circuit(model, 0, 1, offset=-3).dense()
    assert not torch.allclose(a, b, atol=1e-3)


def _edit_config(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | changes))


def _reference(folder):
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    reference.config._attn_implementation = "eager"
    return reference


def test_rope_scaling_is_read_before_rope_parameters(tmp_path):
    """An older config's rope_scaling beside rope_parameters is what transformers computes
    with: a linear one is read, one qkov does not compute is refused, a default one's
    rope_theta is the one used."""
    hf = hf_model("llama")  # rope_parameters: default, rope_theta 300
    folder = save_folder(hf, tmp_path / "llama")
    tokens = _tokens(hf)
    _edit_config(folder, rope_scaling={"rope_type": "linear", "factor": 2.0})
    scaled = hf_logits(_reference(folder), tokens)
    assert not torch.allclose(scaled, hf_logits(hf, tokens), atol=1e-2)  # transformers scales
    model = qkov.load(folder)
    assert model.cfg.rotary_scaling == {"rope_type": "linear", "factor": 2.0}
    torch.testing.assert_close(model(tokens), scaled, atol=1e-4, rtol=0)
    _edit_config(folder, rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(QkovError, match="rope_type='yarn' is not supported"):
        qkov.load(folder)
    _edit_config(folder, rope_scaling={"rope_type": "llama3", "factor": 2.0})
    with pytest.raises(QkovError, match="rope_type 'llama3' has no 'low_freq_factor'"):
        qkov.load(folder)
    _edit_config(folder, rope_scaling="linear")  # not an object: one line, no traceback
    with pytest.raises(QkovError, match="rope_scaling must be a JSON object"):
        qkov.load(folder)
    _edit_config(folder, rope_scaling={"rope_type": "default", "rope_theta": 55.0})
    model = qkov.load(folder)
    assert model.cfg.rotary_base == 55.0 and model.cfg.rotary_scaling is None
    torch.testing.assert_close(
        model(tokens), hf_logits(_reference(folder), tokens), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("family", ["llama", "llama3_rope", "gpt_neox_linear_rope"])
def test_rotary_frequencies_are_transformers(family, tmp_path):
    """qkov's rotation frequencies, rescaled as the checkpoint says, are the ones
    transformers turns queries and keys by; llama3's test model has one in each of the
    scaling's three bands (kept, interpolated, divided by the factor)."""
    hf = hf_model(family)
    model = qkov.load(save_folder(hf, tmp_path / family))
    theta = inverse_frequencies(model.cfg)
    base = model.cfg.rotary_base ** -(
        torch.arange(0, model.cfg.rotary_dim, 2) / model.cfg.rotary_dim
    )
    torch.testing.assert_close(theta, hf.base_model.rotary_emb.inv_freq.float(), rtol=1e-6, atol=0)
    ratio = base / theta  # how much each frequency was slowed
    if family == "llama3_rope":
        kept, divided = ratio == 1, (ratio - 8).abs() < 1e-5
        between = ~kept & ~divided
        assert kept.any() and divided.any() and between.any()
        assert ((ratio[between] > 1) & (ratio[between] < 8)).all()
    elif family == "gpt_neox_linear_rope":
        torch.testing.assert_close(ratio, torch.full_like(ratio, 3.0))
    else:
        assert model.cfg.rotary_scaling is None and (ratio == 1).all()


def test_untied_gpt2_without_its_unembedding_is_refused(tmp_path):
    """tie_word_embeddings false: transformers finds lm_head.weight missing (and would draw
    it at random), so qkov refuses rather than unembed with W_E."""
    folder = save_folder(hf_model("gpt2"), tmp_path / "gpt2")  # tied: no lm_head.weight
    _edit_config(folder, tie_word_embeddings=False)
    _, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert "lm_head.weight" in info["missing_keys"]
    with pytest.raises(QkovError, match="has no tensor 'lm_head.weight'"):
        qkov.load(folder)


@pytest.mark.parametrize("family", ["gpt_neox", "llama_mqa_bias_tied", "qwen2"])
def test_analyze_reads_a_rotary_folder(family, tmp_path):
    """`qkov analyze` on a rotary folder: every analysis but the W_pos QK map (a rotary
    model has no W_pos; said so), and its loss is transformers' loss on the same tokens."""
    from qkov.analyze import analyze, write_analysis
    from qkov.config import TRAINING_ONLY
    from qkov.data.evaluation import evaluation_set

    hf = hf_model(family)
    folder = save_folder(hf, tmp_path / family, tiny_tokenizer())
    text = " ".join([TEXT] * 3)
    analysis = analyze(folder, text=text, log=None)
    rec = analysis["models"][0]
    assert "rotary" in rec["not_computed"]["positional_qk"] and "positional_qk" not in rec
    assert len(rec["heads"]) == 2 * 4 and rec["attribution"]["tokens"]
    # the config the folder gives, without how qkov would initialise a model it trains
    cfg = qkov.load(folder).cfg.to_dict()
    assert rec["config"] == {k: v for k, v in cfg.items() if k not in TRAINING_ONLY}
    assert "seed" not in rec["config"] and rec["config"]["positional"] == "rotary"
    tokens = evaluation_set(qkov.load(folder), text=text).tokens
    logits = hf_logits(hf, tokens)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()
    )
    assert rec["loss"]["value"] == pytest.approx(float(expected), abs=1e-4)
    write_analysis(tmp_path / "out", analysis)
    assert (tmp_path / "out" / "report.html").stat().st_size > 0


def test_padding_ids_past_the_tokenizer_are_never_ranked(tmp_path):
    """A vocabulary padded past its tokenizer (Pythia: 50,304 ids, 50,277 tokens; here 96
    and the tiny BPE's): skip-trigrams never name an id no text can hold, and analyze
    says those ids were left out."""
    from qkov.analyze import analyze
    from qkov.trigrams import skip_trigrams

    folder = save_folder(hf_model("gpt2"), tmp_path / "gpt2", tiny_tokenizer())
    model = qkov.load(folder)
    n_known = model.tokenizer.get_vocab_size()
    assert n_known < model.cfg.d_vocab

    def top_ids(m):
        return [
            max(t.source, t.destination, t.out)
            for h in range(m.cfg.n_heads)
            for t in skip_trigrams(m, 0, h, k=50)
        ]

    assert max(top_ids(model)) < n_known
    bare = qkov.load(folder)
    bare.tokenizer = None  # no tokenizer, no filter: padding ids do rank among the top
    assert max(top_ids(bare)) >= n_known
    rec = analyze(folder, text=" ".join([TEXT] * 3), log=None)["models"][0]
    assert (
        f"ids {n_known:,}-{model.cfg.d_vocab - 1:,}, padding" in rec["not_computed"]["token_filter"]
    )
