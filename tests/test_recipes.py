"""Core recipes: rules, matching, plans, layer-dependent initializers, built-in formulas."""

from __future__ import annotations

import math

import pytest

from xinit.core.recipes import (
    RECIPES,
    AttrConstant,
    FanInUniform,
    InvSqrtUniform,
    PaddingZeroed,
    Param,
    Recipe,
    Rule,
    UnmatchedError,
    dcgan,
    get_recipe,
    gpt2,
    resnet,
    resolve,
    torch_default,
    transformer,
    vit,
)
from xinit.core.specs import (
    Constant,
    KaimingNormal,
    KaimingUniform,
    Normal,
    Ones,
    TruncNormal,
    Uniform,
    XavierNormal,
    XavierUniform,
    Zeros,
)


def P(name, kind, role, shape, **layer):
    return Param(name, kind, role, tuple(shape), layer=tuple(sorted(layer.items())))


LIN_W = P("fc.weight", "linear", "weight", (30, 400))
LIN_B = P("fc.bias", "linear", "bias", (30,), weight_shape=(30, 400))


# ------------------------------------------------------------------ rules


def test_rule_matches_kind_role_name_regex():
    assert Rule(Zeros(), kind="linear", role="bias").matches(LIN_B)
    assert not Rule(Zeros(), kind="linear", role="bias").matches(LIN_W)
    assert Rule(Zeros(), kind=("conv", "linear")).matches(LIN_W)
    assert Rule(Zeros(), name="fc.*").matches(LIN_W)
    assert not Rule(Zeros(), name="head.*").matches(LIN_W)
    assert Rule(Zeros(), regex=r"fc\.(weight|bias)").matches(LIN_B)
    assert not Rule(Zeros(), regex=r"fc").matches(LIN_B)  # the whole name must match
    assert Rule(Zeros()).matches(LIN_W)  # no condition: everything


def test_rule_kind_also_matches_layer_type():
    p = Param("ln.weight", "norm", "weight", (4,), layer_type="LayerNorm")
    assert Rule(Ones(), kind="LayerNorm").matches(p)
    assert not Rule(Ones(), kind="BatchNorm2d").matches(p)


def test_rule_validation():
    with pytest.raises(TypeError, match="Rule init must be a Spec"):
        Rule("normal")
    with pytest.raises(ValueError, match="not a valid pattern"):
        Rule(Zeros(), regex="(")
    with pytest.raises(TypeError, match="Rule kind must be"):
        Rule(Zeros(), kind=(1, 2))


def test_first_match_wins():
    r = Recipe("r", (Rule(Zeros(), name="fc.weight"), Rule(Ones(), kind="linear")))
    assert r.match(LIN_W) == (0, r.rules[0])
    assert r.match(LIN_B) == (1, r.rules[1])
    assert r.match(P("x", "conv", "weight", (2, 2, 1))) is None


def test_recipes_are_frozen_comparable_hashable_printable():
    assert torch_default() == torch_default()
    assert hash(gpt2(n_layer=6)) == hash(gpt2(n_layer=6))
    assert gpt2(n_layer=6) != gpt2(n_layer=12)
    r = torch_default()
    with pytest.raises(AttributeError):
        r.name = "x"
    text = str(r)
    assert text.startswith("Recipe 'torch_default':") and "#1: Rule(kaiming_uniform" in text
    assert repr(Rule(Normal(0.0, 0.02), kind="linear", role="weight")) == (
        "Rule(normal(mean=0.0, std=0.02), kind='linear', role='weight')"
    )


def test_recipe_addition_and_rule_type_check():
    mine = Recipe("mine", (Rule(Zeros(), role="bias"),)) + torch_default()
    assert mine.name == "mine" and mine.rules[1:] == torch_default().rules
    with pytest.raises(TypeError, match="rules must be Rule objects"):
        Recipe("bad", (Zeros(),))


def test_get_recipe():
    assert get_recipe("gpt2") == gpt2(n_layer=12)
    r = Recipe("x", ())
    assert get_recipe(r) is r
    with pytest.raises(ValueError, match="recipe must be a Recipe, 'hf' or one of"):
        get_recipe("xavier")
    assert set(RECIPES) == {"torch_default", "resnet", "transformer", "gpt2", "dcgan", "vit", "timm"}


# ------------------------------------------------------------------ plans


def test_plan_lists_rule_and_spec_and_unmatched():
    conv = P("c.weight", "conv", "weight", (4, 2, 3))
    r = Recipe("lin", (Rule(Zeros(), kind="linear"),))
    plan = r.plan([LIN_W, LIN_B, conv])
    assert plan.unmatched == ("c.weight",)
    assert plan.entries[0].resolved.spec == Zeros()
    text = str(plan)
    assert "fc.weight" in text and "UNMATCHED" in text and "#0" in text
    with pytest.raises(UnmatchedError, match="c.weight") as err:
        plan.check()
    assert isinstance(err.value, ValueError)


def test_plan_error_names_every_unmatched_parameter():
    params = [P(f"x{i}", "other", "p", (2,)) for i in range(3)]
    with pytest.raises(UnmatchedError) as err:
        Recipe("empty", ()).plan(params).check()
    assert all(f"x{i}" in str(err.value) for i in range(3))


def test_plan_validates_spec_on_shape_and_names_parameter():
    r = Recipe("r", (Rule(XavierUniform()),))
    with pytest.raises(ValueError, match="'fc.bias'.*fewer than 2 dimensions"):
        r.plan([LIN_B])


# ------------------------------------------------- layer-dependent initializers


def test_fan_in_uniform_is_torch_bias_bound():
    assert resolve(FanInUniform(), LIN_B).spec == Uniform(-1 / math.sqrt(400), 1 / math.sqrt(400))
    conv_b = P("c.bias", "conv", "bias", (16,), weight_shape=(16, 8, 3, 3))
    assert resolve(FanInUniform(), conv_b).spec.b == 1 / math.sqrt(72)
    empty = P("e.bias", "linear", "bias", (5,), weight_shape=(5, 0))
    assert resolve(FanInUniform(), empty).spec == Uniform(0, 0)
    with pytest.raises(ValueError, match="weight_shape"):
        resolve(FanInUniform(), P("b", "linear", "bias", (3,)))


def test_inv_sqrt_uniform_and_attr_constant():
    p = P("rnn.weight_ih_l0", "recurrent", "weight_ih", (80, 10), hidden_size=20)
    assert resolve(InvSqrtUniform("hidden_size"), p).spec == Uniform(-1 / math.sqrt(20), 1 / math.sqrt(20))
    assert resolve(InvSqrtUniform("hidden_size"), P("r", "recurrent", "w", (0, 3), hidden_size=0)).spec.b == 0
    prelu = P("act.weight", "prelu", "weight", (3,), init=0.1)
    assert resolve(AttrConstant("init", 0.25), prelu).spec == Constant(0.1)
    assert resolve(AttrConstant("init", 0.25), P("a", "prelu", "weight", (1,))).spec == Constant(0.25)


def test_padding_zeroed_rows():
    emb = P("emb.weight", "embedding", "weight", (10, 4), padding_idx=-1)
    assert resolve(PaddingZeroed(Normal(0.0, 1.0)), emb).zero_rows == (9,)
    assert resolve(PaddingZeroed(), P("e", "embedding", "weight", (10, 4))).zero_rows == ()


# --------------------------------------------------------------- built-in formulas


def spec_of(recipe, param):
    (entry,) = recipe.plan([param]).entries
    return entry.resolved.spec


def test_torch_default_formulas():
    r = torch_default()
    assert spec_of(r, LIN_W) == KaimingUniform(a=math.sqrt(5))
    assert spec_of(r, LIN_B).b == 1 / math.sqrt(400)
    assert spec_of(r, P("ct.weight", "conv_transpose", "weight", (16, 32, 3, 3))).plan(
        (16, 32, 3, 3)).fparams[1] == pytest.approx(1 / math.sqrt(288))
    assert spec_of(r, P("b.weight", "bilinear", "weight", (5, 3, 7), in1_features=3)).b == 1 / math.sqrt(3)
    assert spec_of(r, P("lstm.weight_hr_l0", "recurrent", "weight_hr", (5, 20), hidden_size=20)).b == (
        1 / math.sqrt(20)
    )
    assert spec_of(r, P("a.in_proj_weight", "attention", "in_proj_weight", (192, 64))) == XavierUniform()
    assert spec_of(r, P("a.in_proj_bias", "attention", "in_proj_bias", (192,))) == Zeros()
    assert spec_of(r, P("a.out_proj.bias", "attention", "out_proj_bias", (64,))) == Zeros()
    assert spec_of(r, P("a.out_proj.weight", "attention", "out_proj_weight", (64, 64))) == (
        KaimingUniform(a=math.sqrt(5))
    )
    assert spec_of(r, P("a.bias_k", "attention", "bias_k", (1, 1, 64))) == XavierNormal()
    assert spec_of(r, P("e.weight", "embedding", "weight", (10, 3))) == Normal(0.0, 1.0)
    for role, spec in [("weight", Ones()), ("bias", Zeros()), ("running_mean", Zeros()),
                       ("running_var", Ones()), ("num_batches_tracked", Zeros())]:
        assert spec_of(r, P(f"bn.{role}", "norm", role, (8,))) == spec


def test_resnet_formulas():
    conv = P("layer1.0.conv1.weight", "conv", "weight", (64, 64, 3, 3))
    assert spec_of(resnet(), conv) == KaimingNormal(mode="fan_out", nonlinearity="relu")
    bn2 = P("layer1.0.bn2.weight", "norm", "weight", (64,))
    assert spec_of(resnet(), bn2) == Ones()
    assert spec_of(resnet(zero_init_residual="layer*.*.bn2.weight"), bn2) == Zeros()
    assert spec_of(resnet(zero_init_residual="layer*.*.bn2.weight"),
                   P("bn1.weight", "norm", "weight", (64,))) == Ones()
    assert spec_of(resnet(), LIN_W) == KaimingUniform(a=math.sqrt(5))  # fc keeps torch's default


def test_transformer_gpt2_dcgan_vit_formulas():
    emb = P("wte.weight", "embedding", "weight", (50, 8))
    assert spec_of(transformer(), LIN_W) == XavierUniform()
    assert spec_of(transformer(), LIN_B) == Zeros()
    assert spec_of(transformer(), emb) == Normal(0.0, 0.02)
    g = gpt2(n_layer=6)
    assert spec_of(g, LIN_W) == Normal(0.0, 0.02)
    assert spec_of(g, P("h.0.attn.c_proj.weight", "linear", "weight", (8, 8))) == (
        Normal(0.0, 0.02 / math.sqrt(12))
    )
    assert spec_of(g, P("h.0.mlp.c_proj.bias", "linear", "bias", (8,), weight_shape=(8, 8))) == Zeros()
    assert spec_of(g, emb) == Normal(0.0, 0.02)
    with pytest.raises(ValueError, match="n_layer must be a positive int"):
        gpt2(n_layer=0)
    conv = P("c.weight", "conv_transpose", "weight", (4, 8, 4, 4))
    assert spec_of(dcgan(), conv) == Normal(0.0, 0.02)
    assert spec_of(dcgan(), P("bn.weight", "norm", "weight", (8,))) == Normal(1.0, 0.02)
    assert spec_of(dcgan(), P("bn.bias", "norm", "bias", (8,))) == Zeros()
    assert spec_of(vit(), LIN_W) == TruncNormal(0.0, 0.02, -2.0, 2.0)
    assert spec_of(vit(), LIN_B) == Zeros()
    assert spec_of(vit(), P("cls_token", "other", "cls_token", (1, 1, 8))) == Normal(0.0, 1e-6)
    assert spec_of(vit(), P("pos_embed", "other", "pos_embed", (1, 5, 8))) == TruncNormal(0.0, 0.02)


def test_rule_within_and_min_ndim():
    inside = Param("t.enc.fc.weight", "linear", "weight", (4, 4),
                   layer=(("ancestors", ("Transformer", "ModuleList")),))
    bias = Param("t.enc.fc.bias", "linear", "bias", (4,),
                 layer=(("ancestors", ("Transformer",)), ("weight_shape", (4, 4))))
    rule = Rule(XavierUniform(), within="Transformer", min_ndim=2)
    assert rule.matches(inside) and not rule.matches(bias) and not rule.matches(LIN_W)
    assert "within='Transformer', min_ndim=2" in repr(rule)
    # torch_default names torch's own Transformer (the adapter lists enclosing classes by
    # qualified and bare name), so another library's class called "Transformer" is not it
    torch_inside = Param("t.enc.fc.weight", "linear", "weight", (4, 4), layer=(
        ("ancestors", ("torch.nn.modules.transformer.Transformer", "Transformer", "ModuleList")),))
    assert spec_of(torch_default(), torch_inside) == XavierUniform()
    assert spec_of(torch_default(), inside) == KaimingUniform(a=math.sqrt(5))
    assert spec_of(torch_default(), bias) == Uniform(-0.5, 0.5)
    with pytest.raises(TypeError, match="min_ndim"):
        Rule(Zeros(), min_ndim=-1)


# ------------------------------------------- classes, buffers, configs (issue 14)


def test_rule_kind_matches_class_lineage_and_globs():
    conv_same = Param("c.weight", "conv", "weight", (4, 3, 3, 3), layer_type="Conv2dSame",
                      lineage=("timm.layers.conv2d_same.Conv2dSame", "Conv2dSame",
                               "torch.nn.modules.conv.Conv2d", "Conv2d", "torch.nn.modules.conv._ConvNd"))
    assert Rule(Zeros(), kind="Conv2d").matches(conv_same)
    assert Rule(Zeros(), kind="torch.nn.modules.conv.Conv2d").matches(conv_same)
    assert Rule(Zeros(), kind="*Same").matches(conv_same)
    assert not Rule(Zeros(), kind="Conv1d").matches(conv_same)
    assert not Rule(Zeros(), kind="*Norm").matches(conv_same)

    class Mine:
        pass

    rule = Rule(Zeros(), kind=Mine)
    assert rule.kind == (f"{Mine.__module__}.{Mine.__qualname__}",)
    with pytest.raises(TypeError, match="Rule kind must be"):
        Rule(Zeros(), kind=3)


def test_rules_touch_buffers_only_when_they_say_so():
    buf = Param("rope.pos_embed", "other", "pos_embed", (64, 32), buffer=True)
    par = Param("pos_embed", "other", "pos_embed", (1, 64, 32))
    assert not Rule(Zeros(), name="*pos_embed*").matches(buf)
    assert Rule(Zeros(), name="*pos_embed*", buffers=True).matches(buf)
    assert Rule(Zeros(), name="*pos_embed*").matches(par)
    (entry,) = vit().plan([buf]).entries
    assert entry.rule is None
    stats_ = Param("bn.running_var", "norm", "running_var", (8,), buffer=True)
    assert spec_of(torch_default(), stats_) == Ones()
    assert "buffers=True" in repr(torch_default().rules[-3])
    with pytest.raises(TypeError, match="buffers must be True or False"):
        Rule(Zeros(), buffers="yes")


def test_plan_table_has_a_tensor_column():
    plan = torch_default().plan([
        Param("bn.weight", "norm", "weight", (8,)),
        Param("bn.running_mean", "norm", "running_mean", (8,), buffer=True),
        Param("rope.inv_freq", "other", "inv_freq", (8,), buffer=True),
    ])
    lines = str(plan).splitlines()
    assert lines[1].split()[:2] == ["name", "tensor"]
    assert lines[2].split()[1] == "param" and lines[3].split()[1] == "buffer"
    assert lines[4].endswith("left as it is")
    with_ckpt = plan.with_sources({"bn.weight": "loaded"})
    assert with_ckpt.loaded == ("bn.weight",) and with_ckpt.drawn == ("bn.running_mean",)
    assert "loaded from the checkpoint" in str(with_ckpt)


def test_attr_constant_reads_any_attribute_and_never_falls_back_silently():
    ls = Param("ls.gamma", "other", "gamma", (4,), layer_type="LayerScale",
               layer=(("dim", 4), ("init_values", 1e-5)))
    assert resolve(AttrConstant("init_values"), ls).spec == Constant(1e-5)
    with pytest.raises(ValueError, match=r"'scale'.*the layer has: dim, init_values"):
        resolve(AttrConstant("scale"), ls)
    assert resolve(AttrConstant("scale", default=2.0), ls).spec == Constant(2.0)
    assert repr(AttrConstant("init_values")) == "constant(init_values)"
    with pytest.raises(TypeError, match="attr must be a non-empty string"):
        AttrConstant("")


def test_gpt2_residual_can_be_empty():
    """Regression: gpt2(residual=()) raised a TypeError while resnet(zero_init_residual=())
    is that recipe's default."""
    proj = Param("h.0.attn.c_proj.weight", "linear", "weight", (8, 8))
    for residual in ((), None, ""):
        assert spec_of(gpt2(residual=residual), proj) == Normal(0.0, 0.02)
    assert spec_of(gpt2(), proj) == Normal(0.0, 0.02 / math.sqrt(24))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_builtin_recipes_round_trip_through_json(name):
    import json

    r = get_recipe(name)
    config = json.loads(json.dumps(r.to_config()))
    assert Recipe.from_config(config) == r
    assert Recipe.from_config(config).config_hash() == r.config_hash()


def test_recipe_config_keeps_every_condition_and_derived_initializer():
    r = Recipe("all", (
        Rule(PaddingZeroed(Normal(0.0, 0.5)), kind=("embedding", "Embed"), role="weight"),
        Rule(FanInUniform(), regex=r"fc\.bias", min_ndim=1),
        Rule(InvSqrtUniform("in1_features"), within="Bilinear", name=("a.*", "b.*")),
        Rule(AttrConstant("init", default=0.25), kind="prelu", buffers=True),
    ))
    back = Recipe.from_config(r.to_config())
    assert back == r and back.rules[3].buffers and back.rules[0].init.spec == Normal(0.0, 0.5)
    assert r.config_hash() != gpt2().config_hash()

    class Unnamed(FanInUniform.__mro__[1]):  # a Derived without a config name
        def resolve(self, param):
            return None

    with pytest.raises(TypeError, match="cannot be written as a config"):
        Recipe("x", (Rule(Unnamed()),)).to_config()


def test_hf_recipe_reads_a_config_mapping():
    from xinit.core.recipes_hf import hf

    r = hf({"model_type": "gpt2", "initializer_range": 0.01, "n_layer": 8})
    assert r.rules[0].init == Normal(0.0, 0.01 / 4)
    llama = hf({"model_type": "llama", "initializer_range": 0.0})  # 0 means 0.02, as transformers
    assert llama.rules[0].init == Normal(0.0, 0.02)
    t5 = hf({"model_type": "t5", "initializer_factor": 2.0, "d_model": 16, "d_kv": 4, "d_ff": 32,
             "num_heads": 2})
    assert t5.rules[0].init == Constant(2.0)
    with pytest.raises(ValueError, match="'n_layer' must be a positive number"):
        hf({"model_type": "gpt2", "initializer_range": 0.02})
    with pytest.raises(ValueError, match="hf\\(model.config\\)"):
        get_recipe("hf")
    norm = Param("model.norm.weight", "norm", "weight", (8,), layer_type="LlamaRMSNorm",
                 lineage=("m.LlamaRMSNorm", "LlamaRMSNorm"))
    assert spec_of(llama, norm) == Ones()


def test_registry_knows_library_layers_by_name(restore_registry):
    from xinit.core import layers
    from xinit.core.layout import Layout

    Conv1D = type("Conv1D", (), {"__module__": "transformers.pytorch_utils"})
    entry = layers.layer_of(Conv1D)
    assert entry.kind == "linear" and entry.layout == Layout(in_axis=0, out_axis=1)
    for name in ("LlamaRMSNorm", "T5LayerNorm", "RmsNorm", "LayerNorm2d"):
        assert layers.layer_of(type(name, (), {})).kind == "norm", name
    assert layers.layer_of(type("LayerNormLinear", (), {})) is None  # a fused linear, not a norm
    layers.register_layer("*Gate", kind="linear")
    assert layers.layer_of(type("MyGate", (), {})).kind == "linear"
    layers.unregister_layer("*Gate")
    assert layers.layer_of(type("MyGate", (), {})) is None
    layers.register_layer("transformers.pytorch_utils.Conv1D", kind="conv")  # a user's word wins
    assert layers.layer_of(Conv1D).kind == "conv"
    base = type("Base", (), {})
    child = type("Child", (base,), {})
    assert layers.lineage(child)[1::2] == ("Child", "Base")
