"""The training probe: best induction / previous-token scores and the probe ICL score."""

import torch

from qkov import AttnOnlyTransformer, ModelConfig
from qkov.training_probe import training_probe
from test_heads import build_induction_model


def test_training_probe_on_handbuilt_and_random():
    probe = training_probe(build_induction_model())
    assert set(probe) == {
        "probe_induction_score",
        "probe_previous_token_score",
        "probe_previous_token_head",
        "probe_icl_score",
        "probe_induction_head",  # two layers: the induction circuit's weight statistics too
        "probe_partner_head",
        "probe_k_composition",
        "probe_qk_eigenvalue",
        "probe_ov_eigenvalue",
        "repetition_half_len",  # the repetition test: qkov.repetition.repetition_record
        "repetition_induction_head",
        "repetition_induction_score",
        "repetition_second_head",
        "repetition_second_score",
        "repetition_first_half_loss",
        "repetition_repeated_half_loss",
        "repetition_uniform_loss",
        "repetition_repeated_fraction",
    }
    assert probe["probe_induction_score"] > 0.99 and probe["probe_previous_token_score"] > 0.99
    assert probe["probe_previous_token_head"] == "L0H0"
    assert probe["probe_icl_score"] < -3
    # the planted head learns the repeat: its half costs far less than the random first half
    assert probe["repetition_induction_score"] > 0.9
    assert probe["repetition_repeated_half_loss"] < probe["repetition_first_half_loss"] / 3
    without = training_probe(build_induction_model(), repetition=False)
    assert set(without) == {k for k in probe if k.startswith("probe_")}
    cfg = ModelConfig(n_layers=2, n_heads=4, d_model=128, n_ctx=256, d_vocab=4096)
    rnd = training_probe(AttnOnlyTransformer(cfg))
    assert rnd["probe_induction_score"] < 0.2 and abs(rnd["probe_icl_score"]) < 0.5
    assert training_probe(AttnOnlyTransformer(cfg), seed=0) == rnd  # fixed batch


def test_the_probe_names_a_previous_token_head_in_the_last_layer():
    """The planted previous-token head's QK moved from L0H0 to L1H1: the score is as high,
    and the probe names the head where it now is, in a layer no induction head can read
    (the induction score falls with it): a 2-layer run whose previous-token head forms in
    layer 1 reads as such, not as a circuit about to form."""
    model = build_induction_model()
    with torch.no_grad():
        model.W_Q[1, 1], model.W_K[1, 1] = model.W_Q[0, 0], model.W_K[0, 0]
        model.W_Q[0, 0].zero_()
        model.W_K[0, 0].zero_()
    probe = training_probe(model, repetition=False)
    assert probe["probe_previous_token_score"] > 0.99
    assert probe["probe_previous_token_head"] == "L1H1"
    assert probe["probe_induction_score"] < 0.2
