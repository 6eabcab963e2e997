"""qkov/hook_points.py: the hook point names of each architecture (that a forward pass
caches exactly these names: tests/test_model.py and tests/test_model_reference.py)."""

from qkov import ModelConfig
from qkov.hook_points import hook_names


def test_hook_names_of_the_general_model():
    names = hook_names(
        ModelConfig(
            n_layers=1, d_mlp=8, normalization="layernorm", bias=True, positional="standard"
        )
    )
    assert names[-3:] == ["resid_post.0", "ln_final_scale", "logits"]
    for n in ("ln1_scale.0", "resid_mid.0", "ln2_scale.0", "mlp_pre.0", "mlp_post.0", "mlp_out.0"):
        assert n in names
    rms = hook_names(ModelConfig(n_layers=1, d_mlp=8, normalization="rms"))
    assert {"scale.0", "ln2_scale.0", "scale.final"} <= set(rms)  # today's names kept for rms
    assert hook_names(ModelConfig(n_layers=1)) == hook_names(ModelConfig(n_layers=1, bias=True))
