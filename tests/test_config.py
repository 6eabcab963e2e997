import pytest

from qkov import ModelConfig, QkovError


def test_json_round_trip():
    cfg = ModelConfig(
        n_layers=3,
        n_heads=2,
        d_model=24,
        d_head=5,
        n_ctx=7,
        d_vocab=11,
        positional="standard",
        seed=4,
        normalization="rms",
        pos_init_std=0.5,
    )
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    scaled = ModelConfig(
        d_model=24, positional="rotary", rotary_scaling={"rope_type": "linear", "factor": 4.0}
    )
    assert ModelConfig.from_json(scaled.to_json()) == scaled
    # hashable like any config, equal ones alike (its rotary_scaling is a dict)
    assert len({scaled, ModelConfig.from_json(scaled.to_json()), cfg, ModelConfig()}) == 3


def test_configs_written_before_normalization_load_as_the_norm_free_model():
    old = {"n_layers": 1, "n_heads": 2, "d_model": 8, "d_vocab": 5, "init_std": 0.02}
    cfg = ModelConfig.from_dict(old)
    assert cfg.normalization == "none" and cfg.pos_init_std is None


def test_d_head_defaults_to_d_model_over_heads():
    assert ModelConfig(d_model=128, n_heads=4).d_head == 32


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"d_model": 0}, "d_model must be positive"),
        ({"n_heads": -1}, "n_heads must be positive"),
        ({"n_layers": -1}, "n_layers must be >= 0"),
        ({"positional": "alibi"}, "positional='alibi' is unknown"),
        ({"d_model": 10, "n_heads": 3}, "not divisible"),
        ({"n_ctx": 2.5}, "n_ctx must be an integer"),
        ({"d_vocab": True}, "d_vocab must be an integer"),
        ({"normalization": "batchnorm"}, "normalization='batchnorm' is unknown"),
        ({"d_mlp": -1}, "d_mlp must be >= 0"),
        ({"d_mlp": 2.0}, "d_mlp must be an integer"),
        ({"act_fn": "tanh"}, "act_fn='tanh' is unknown"),
        ({"bias": 1}, "bias must be true or false"),
        (
            {"normalization": "layernorm"},  # shortformer is the default
            "positional='shortformer' with normalization='layernorm' is not supported",
        ),
        (
            {"normalization": "rmsnorm"},
            "positional='shortformer' with normalization='rmsnorm' is not supported",
        ),
        ({"pos_init_std": 0.0}, "pos_init_std must be a positive finite number"),
        ({"pos_init_std": "big"}, "pos_init_std must be a number"),
        ({"rotary_scaling": {"rope_type": "linear", "factor": 2}}, "needs positional='rotary'"),
        (
            {"positional": "rotary", "rotary_scaling": {"rope_type": "yarn", "factor": 2}},
            "rope_type is one of linear, llama3",
        ),
        (
            {"positional": "rotary", "rotary_scaling": [("rope_type", "linear")]},
            "must be a JSON object",
        ),
        (
            {"positional": "rotary", "rotary_scaling": {"rope_type": "linear"}},
            r"needs exactly the keys \['factor'\]",
        ),
        (
            {"positional": "rotary", "rotary_scaling": {"rope_type": "linear", "factor": 0}},
            "factor must be a positive finite number",
        ),
        (
            {"positional": "rotary", "rotary_scaling": {"rope_type": "linear", "factor": True}},
            "factor must be a positive finite number",
        ),
        (
            {
                "positional": "rotary",
                "rotary_scaling": {
                    "rope_type": "llama3",
                    "factor": 8,
                    "low_freq_factor": 4,
                    "high_freq_factor": 4,
                    "original_max_position_embeddings": 64,
                },
            },
            "low_freq_factor must be below its high_freq_factor",
        ),
    ],
)
def test_validation_names_field(kwargs, words):
    with pytest.raises(QkovError, match=words) as e:
        ModelConfig(**kwargs)
    assert "\n" not in str(e.value)  # one line


def test_unknown_keys_and_bad_json():
    with pytest.raises(QkovError, match="unknown keys \\['d_ff'\\]"):
        ModelConfig.from_dict({"d_model": 8, "n_heads": 2, "d_ff": 4})
    with pytest.raises(QkovError, match="not valid JSON"):
        ModelConfig.from_json("{")
    with pytest.raises(QkovError, match="JSON object"):
        ModelConfig.from_json("[1, 2]")


def test_zero_layers_allowed():
    cfg = ModelConfig(n_layers=0)
    assert cfg.n_params == 2 * cfg.d_vocab * cfg.d_model + cfg.n_ctx * cfg.d_model


@pytest.mark.parametrize(
    "base, field, other",
    [
        (dict(positional="shortformer"), "rotary_base", 500.0),
        (dict(positional="rotary"), "pos_init_std", 0.1),
        (dict(normalization="none"), "norm_eps", 0.5),
        (dict(d_mlp=0), "act_fn", "relu"),
    ],
)
def test_a_field_left_out_of_the_acting_fields_changes_nothing_in_the_model(base, field, other):
    """`acting_fields` (what `qkov info` and the model card show) leaves a field out only
    where no value of it changes the model: the same seed with another value gives the same
    logits; where the field is shown, the other value changes them."""
    import torch

    from qkov.config import acting_fields
    from qkov.model import Transformer

    acting = {
        "rotary_base": dict(positional="rotary"),
        "pos_init_std": dict(positional="standard"),
        "norm_eps": dict(normalization="rms"),
        "act_fn": dict(d_mlp=16),
    }[field]
    tokens = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    for kwargs, shown in ((base, False), (acting, True)):
        kwargs = dict(n_layers=1, n_heads=2, d_model=8, n_ctx=8, d_vocab=32, init_std=1.0) | kwargs
        cfg = ModelConfig(**kwargs)
        assert (field in acting_fields(cfg.to_dict())) == shown, (field, kwargs)
        logits = [
            Transformer(ModelConfig(**kwargs | {field: value}))(tokens)
            for value in (getattr(cfg, field), other)
        ]
        assert torch.equal(*logits) != shown, (field, kwargs)


def test_acting_fields_keep_the_grouped_query_and_mlp_options_of_models_that_have_them():
    from qkov.config import acting_fields

    plain = acting_fields(ModelConfig(n_heads=4, d_model=16).to_dict())
    assert not {"n_kv_heads", "gated_mlp", "parallel", "act_fn"} & set(plain)
    assert {"d_mlp", "bias", "positional", "pos_init_std"} <= set(plain)
    kwargs = dict(n_heads=4, d_model=16, n_kv_heads=2, d_mlp=8, gated_mlp=True, parallel=True)
    gqa = acting_fields(ModelConfig(**kwargs).to_dict())
    assert (gqa["n_kv_heads"], gqa["gated_mlp"], gqa["parallel"]) == (2, True, True)
    assert list(gqa) == [k for k in ModelConfig().to_dict() if k in gqa]  # their order
