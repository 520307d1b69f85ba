"""The framework-neutral parts of porting: the layer registry, conversions per kind, names,
hyper-parameter checks and reports (``xinit.core.layers``, ``xinit.core.porting``); and the
Flax structure (``xinit.flax.trace``) that initialization and porting read."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xinit
from xinit.core import layers as registry
from xinit.core import porting
from xinit.core.layout import FLAX, TORCH, Layout
from xinit.core.porting import Concat, Flip, Permute, Reshape, Rows, Sum, Tensor, Zeros

# -------------------------------------------------------------- the registry


def test_builtin_torch_layers_by_class_hierarchy():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    cases = {
        nn.Linear: "linear", nn.LazyLinear: "linear", nn.Bilinear: "bilinear",
        nn.modules.linear.NonDynamicallyQuantizableLinear: "linear",
        nn.Conv1d: "conv", nn.Conv3d: "conv", nn.LazyConv2d: "conv",
        nn.ConvTranspose2d: "conv_transpose", nn.LazyConvTranspose1d: "conv_transpose",
        nn.Embedding: "embedding", nn.EmbeddingBag: "embedding",
        nn.LSTM: "recurrent", nn.GRUCell: "recurrent", nn.MultiheadAttention: "attention",
        nn.BatchNorm2d: "norm", nn.SyncBatchNorm: "norm", nn.InstanceNorm1d: "norm",
        nn.LayerNorm: "norm", nn.GroupNorm: "norm", nn.RMSNorm: "norm", nn.PReLU: "prelu",
    }
    for cls, kind in cases.items():
        entry = registry.layer_of(cls)
        assert entry is not None and entry.kind == kind and entry.builtin, cls
        assert entry.layout == TORCH
    assert registry.layer_of(nn.ReLU) is None and registry.layer_of(nn.Sequential) is None

    class Conv2dSame(nn.Conv2d):  # timm's pattern: a subclass gets its parent's entry
        pass

    assert registry.layer_of(Conv2dSame).kind == "conv"


def test_builtin_flax_layers_with_their_kernel_layouts():
    linen = pytest.importorskip("flax.linen")
    from flax import nnx

    cases = {
        linen.Dense: ("linear", FLAX), linen.DenseGeneral: ("linear", FLAX),
        linen.Conv: ("conv", FLAX), linen.ConvTranspose: ("conv_transpose", registry.FLAX_CONV_TRANSPOSE),
        linen.Embed: ("embedding", TORCH), linen.BatchNorm: ("norm", TORCH),
        linen.MultiHeadDotProductAttention: ("attention", FLAX),
        linen.SelfAttention: ("attention", FLAX), linen.OptimizedLSTMCell: ("recurrent", FLAX),
        linen.PReLU: ("prelu", TORCH),
        nnx.Linear: ("linear", FLAX), nnx.LinearGeneral: ("linear", FLAX), nnx.Conv: ("conv", FLAX),
        nnx.ConvTranspose: ("conv_transpose", registry.FLAX_CONV_TRANSPOSE),
        nnx.RMSNorm: ("norm", TORCH), nnx.MultiHeadAttention: ("attention", FLAX),
        nnx.GRUCell: ("recurrent", FLAX), nnx.PReLU: ("prelu", TORCH),
    }
    for cls, (kind, layout) in cases.items():
        entry = registry.layer_of(cls)
        assert (entry.kind, entry.layout) == (kind, layout), cls
    assert registry.container_of(linen.Sequential) == "sequential"
    assert registry.container_of(nnx.Bidirectional) == "bidirectional"
    assert registry.container_of(linen.RNN) == "rnn" and registry.container_of(linen.Dense) is None


def test_register_layer_by_class_qualified_or_bare_name(restore_registry):
    class Conv1D:
        pass

    class Other:
        pass

    assert registry.layer_of(Conv1D) is None
    assert xinit.register_layer("Conv1D", kind="linear", layout=Layout(0, 1)) == "Conv1D"
    entry = registry.layer_of(Conv1D)
    assert (entry.kind, entry.layout, entry.builtin) == ("linear", Layout(0, 1), False)
    assert registry.layer_of(Other) is None

    qualified = registry.qualified_name(Other)
    xinit.register_layer(qualified, kind="norm")
    assert registry.layer_of(Other).kind == "norm"
    assert xinit.register_layer(Other, kind="prelu") is Other  # a class: keyed by its qualified name
    assert registry.layer_of(Other).kind == "prelu"

    class Sub(Other):
        pass

    assert registry.layer_of(Sub).kind == "prelu"  # subclasses match
    registry.unregister_layer(Other)
    assert registry.layer_of(Sub) is None


def test_a_declaration_replaces_a_builtin_and_unregister_restores_it(restore_registry):
    key = "torch.nn.modules.linear.Linear"
    xinit.register_layer(key, kind="other")
    assert registry._qualified[key].kind == "other"
    registry.unregister_layer(key)
    assert registry._qualified[key].kind == "linear" and registry._qualified[key].builtin
    with pytest.raises(KeyError, match="was not registered"):
        registry.unregister_layer(key)


@pytest.mark.parametrize("args, kwargs, error, match", [
    (("X",), {"kind": "dense"}, ValueError, r"kind must be one of \['linear'"),
    (("X",), {"kind": "linear", "layout": (0, 1)}, TypeError, "layout must be an xinit.Layout"),
    ((3,), {"kind": "linear"}, TypeError, "a class or its name"),
    (("",), {"kind": "linear"}, TypeError, "a class or its name"),
    ((".X",), {"kind": "linear"}, TypeError, "a class or its name"),
])
def test_register_layer_rejects_bad_arguments(restore_registry, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        xinit.register_layer(*args, **kwargs)
    assert not registry._bare  # nothing registered


# -------------------------------------------------------------- expressions


def test_operations_on_arrays_and_shapes_agree():
    x = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for op in (Permute((2, 0, 1)), Reshape((6, 4)), Flip((1, 2)), Rows(1, 2)):
        assert op.apply(x).shape == op.shape(x.shape), op
    assert np.array_equal(Flip((1,)).apply(x), x[:, ::-1])
    with pytest.raises(ValueError, match="cannot reshape"):
        Reshape((5,)).shape((2, 3))
    ops = (Permute((2, 0, 1)), Reshape((4, 6)), Flip((1,)))
    back = porting._inverse(ops, x.shape)
    y = x
    for op in ops + back:
        y = op.apply(y)
    assert np.array_equal(y, x)


def test_expressions_evaluate_describe_and_shape():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 3), np.float32)
    get = {"a": a, "b": b}.__getitem__
    cat = Concat((Tensor("a", (Permute((1, 0)),)), Tensor("b", (Permute((1, 0)),))))
    assert porting.shape_of(cat, {"a": (2, 3), "b": (2, 3)}) == (6, 2)
    assert np.array_equal(porting.evaluate(cat, get), np.concatenate([a.T, b.T]))
    assert porting.describe(cat) == "merge 2 (transpose)"
    s = Sum((Tensor("a", (Rows(0, 1),)), Tensor("b", (Rows(1, 2),))))
    assert np.array_equal(porting.evaluate(s, get), a[:1] + 1)
    assert porting.describe(s).startswith("fold (sum of a")
    z = Concat((Zeros((1, 3)), Tensor("a")))
    out = porting.evaluate(z, get)
    assert out.dtype == np.float32 and np.array_equal(out[0], np.zeros(3))
    assert porting.sources(z) == ("a",)
    assert porting.describe(Tensor("a", (Permute((1, 0)), Permute((1, 0))))) == "copy"  # composed
    with pytest.raises(ValueError, match="cannot stack"):
        porting.shape_of(cat, {"a": (2, 3), "b": (3, 3)})


def _canon(conv, shapes):
    return {m.target: porting.shape_of(m.expr, shapes) for m in conv.to_canonical}


def test_conversion_shapes_for_each_kind():
    dense = porting.conversion("linear", "Dense", FLAX, {}, {"kernel": (4, 3), "bias": (3,)})
    assert _canon(dense, {"kernel": (4, 3), "bias": (3,)}) == {"weight": (3, 4), "bias": (3,)}
    general = {"kernel": (6, 2, 4), "bias": (2, 4)}
    dg = porting.conversion("linear", "DenseGeneral", FLAX, {"axis": -1}, general)
    assert _canon(dg, general) == {"weight": (8, 6), "bias": (8,)}
    conv = porting.conversion("conv", "Conv", FLAX, {}, {"kernel": (3, 3, 4, 8)})
    assert _canon(conv, {"kernel": (3, 3, 4, 8)}) == {"weight": (8, 4, 3, 3)}
    for tk, shape in ((False, (3, 3, 4, 6)), (True, (3, 3, 6, 4))):
        ct = porting.conversion("conv_transpose", "ConvTranspose", registry.FLAX_CONV_TRANSPOSE,
                                {"transpose_kernel": tk}, {"kernel": shape})
        assert _canon(ct, {"kernel": shape}) == {"weight": (4, 6, 3, 3)}  # torch's (in, out, k)
        assert ("flip" in porting.describe(ct.to_canonical[0].expr)) is (not tk)
    bn = porting.conversion("norm", "BatchNorm", TORCH, {}, {"scale": (5,), "bias": (5,),
                                                             "mean": (5,), "var": (5,)})
    assert {m.target for m in bn.to_canonical} == {"weight", "bias", "running_mean", "running_var"}
    prelu = porting.conversion("prelu", "PReLU", TORCH, {}, {"negative_slope": ()})
    assert _canon(prelu, {"negative_slope": ()}) == {"weight": (1,)}


def test_attention_packs_qkv_like_torch():
    shapes = {f"{p}/kernel": (8, 2, 4) for p in ("query", "key", "value")}
    shapes |= {f"{p}/bias": (2, 4) for p in ("query", "key", "value")}
    shapes |= {"out/kernel": (2, 4, 8), "out/bias": (8,)}
    c = porting.conversion("attention", "MultiHeadDotProductAttention", FLAX, {}, shapes)
    assert _canon(c, shapes) == {"in_proj_weight": (24, 8), "in_proj_bias": (24,),
                                 "out_proj.weight": (8, 8), "out_proj.bias": (8,)}
    rng = np.random.default_rng(0)
    values = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    canon = {m.target: porting.evaluate(m.expr, values.__getitem__) for m in c.to_canonical}
    np.testing.assert_array_equal(canon["in_proj_weight"][8:16], values["key/kernel"].reshape(8, 8).T)
    back = {m.target: porting.evaluate(m.expr, canon.__getitem__) for m in c.to_flax}
    assert all(np.array_equal(back[k], values[k]) for k in values)
    kv = dict(shapes, **{"key/kernel": (6, 2, 4), "value/kernel": (5, 2, 4)})
    c2 = porting.conversion("attention", "MultiHeadDotProductAttention", FLAX, {}, kv)
    assert {m.target for m in c2.to_canonical} >= {"q_proj_weight", "k_proj_weight", "v_proj_weight"}
    qk = dict(shapes, **{"query_ln/scale": (4,)})
    assert "normalize_qk" in porting.conversion("attention", "X", FLAX, {}, qk).problems[0]


def test_recurrent_cells_use_torch_gate_order_and_suffixes():
    h, i = 3, 5
    lstm = {f"{g}/kernel": (i, h) for g in ("ii", "if", "ig", "io")}
    lstm |= {f"{g}/kernel": (h, h) for g in ("hi", "hf", "hg", "ho")}
    lstm |= {f"{g}/bias": (h,) for g in ("hi", "hf", "hg", "ho")}
    c = porting.conversion("recurrent", "LSTMCell", FLAX, {}, lstm, rnn_suffix="_l0_reverse")
    assert _canon(c, lstm) == {"weight_ih_l0_reverse": (4 * h, i), "weight_hh_l0_reverse": (4 * h, h),
                               "bias_ih_l0_reverse": (4 * h,), "bias_hh_l0_reverse": (4 * h,)}
    assert all(m.lossy for m in c.to_flax if m.target.endswith("/bias"))
    rng = np.random.default_rng(1)
    torch_side = {"weight_ih_l0_reverse": rng.standard_normal((4 * h, i)),
                  "weight_hh_l0_reverse": rng.standard_normal((4 * h, h)),
                  "bias_ih_l0_reverse": rng.standard_normal(4 * h),
                  "bias_hh_l0_reverse": rng.standard_normal(4 * h)}
    flax = {m.target: porting.evaluate(m.expr, torch_side.__getitem__) for m in c.to_flax}
    np.testing.assert_array_equal(flax["ig/kernel"], torch_side["weight_ih_l0_reverse"][2 * h:3 * h].T)
    np.testing.assert_allclose(flax["hf/bias"], torch_side["bias_ih_l0_reverse"][h:2 * h]
                               + torch_side["bias_hh_l0_reverse"][h:2 * h])
    gru = {f"{g}/kernel": (i, h) for g in ("ir", "iz", "in")} | {f"{g}/kernel": (h, h) for g in ("hr", "hz", "hn")}
    gru |= {f"{g}/bias": (h,) for g in ("ir", "iz", "in", "hn")}
    g = porting.conversion("recurrent", "GRUCell", FLAX, {}, gru)
    lossless = {m.target for m in g.to_flax if not m.lossy}
    assert {"in/bias", "hn/bias"} <= lossless and "ir/bias" not in lossless
    packed = {"dense_i/kernel": (i, 3 * h), "dense_i/bias": (3 * h,), "dense_h/kernel": (h, 3 * h)}
    p = porting.conversion("recurrent", "GRUCell", FLAX, {}, packed)
    assert [t.ops for t in p.must_be_zero] == [(Rows(2 * h, 3 * h),)]
    odd = porting.conversion("recurrent", "MyCell", FLAX, {}, {"w/kernel": (2, 2)})
    assert "only LSTM and GRU cells" in odd.problems[0]


# -------------------------------------------------------------------- names


def test_canonical_prefix_and_renamer():
    containers = {("seq",): "sequential", ("a", "body"): "sequential"}
    assert porting.canonical_prefix(("seq", "layers_2"), containers) == "seq.2"
    assert porting.canonical_prefix(("a", "body", "layers", "0", "x"), containers) == "a.body.0.x"
    assert porting.canonical_prefix(("other", "layers_2"), containers) == "other.layers_2"
    r = porting.as_renamer([(r"^h_(\d+)\.", r"h.\1."), (r"\.kernel$", ".weight")])
    assert r("h_3.attn.kernel") == "h.3.attn.weight"
    assert porting.as_renamer(None) is None and porting.as_renamer(str.upper)("a") == "A"
    with pytest.raises(TypeError, match="callable or a list"):
        porting.as_renamer("h_0")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        porting.as_renamer([("(", "x")])


def test_name_resolver_maps_segments_onto_the_torch_tree():
    torch_modules = {"": ("other", "Net"), "blocks": ("other", "ModuleList"),
                     "blocks.0": ("linear", "Linear"), "blocks.1": ("linear", "Linear"),
                     "body": ("other", "Sequential"), "body.0": ("linear", "Linear"),
                     "body.1": ("other", "ReLU"), "body.2": ("linear", "Linear"),
                     "head": ("linear", "Linear")}
    resolver = porting.NameResolver(torch_modules)
    assert resolver.resolve(["blocks_1"], [("linear", "Dense", None)], {}) == "blocks.1"
    siblings = {"": {"body", "head"}, "body": {"Dense_0", "Dense_1"}}
    infos = [None, ("linear", "Dense", 1)]
    assert resolver.resolve(["body", "Dense_1"], infos, siblings) == "body.2"
    # an automatic name skips torch children a Flax sibling names explicitly
    siblings = {"": {"head", "Dense_0"}}
    assert resolver.resolve(["Dense_0"], [("linear", "Dense", 0)], siblings) == "Dense_0"
    assert resolver.resolve(["nothing"], [None], {}) == "nothing"


# --------------------------------------------------------- hyper-parameters


@pytest.mark.parametrize("kind, t_attrs, f_attrs, expected", [
    ("norm", {"eps": 1e-5}, {"epsilon": 1e-6}, "epsilon differs"),
    ("norm", {"eps": 1e-5}, {"epsilon": 1e-5}, None),
    ("norm", {"eps": None}, {"epsilon": 1e-6}, "torch.finfo"),
    ("norm", {"eps": 1e-5, "num_groups": 2}, {"epsilon": 1e-5, "num_groups": 4}, "num_groups"),
    ("conv", {"kernel_size": (3, 3), "padding": (1, 1), "stride": (1, 1)},
     {"padding": "SAME"}, None),
    ("conv", {"kernel_size": (3, 3), "padding": (1, 1)}, {"padding": "VALID"}, "padding differs"),
    ("conv", {"kernel_size": (3,), "padding": "same", "dilation": (2,)}, {"padding": "SAME",
     "kernel_dilation": 2}, None),
    ("conv", {"kernel_size": (3,), "padding": (0,)}, {"padding": 0, "strides": 2}, "stride differs"),
    ("conv", {"kernel_size": (3,), "groups": 2, "padding": (1,)},
     {"padding": ((1, 1),), "feature_group_count": 1}, "groups differs"),
    ("conv", {"kernel_size": (3,), "padding_mode": "circular", "padding": (1,)}, {"padding": "SAME"},
     "padding mode"),
    ("conv_transpose", {"kernel_size": (4,), "stride": (2,), "padding": (1,), "output_padding": (0,)},
     {"padding": ((2, 2),), "strides": 2}, None),
    ("conv_transpose", {"kernel_size": (4,), "stride": (2,), "padding": (1,), "output_padding": (0,)},
     {"padding": "SAME", "strides": 2}, None),  # lax: SAME with k=4, s=2 pads (2, 2)
    ("conv_transpose", {"kernel_size": (3,), "stride": (2,), "padding": (0,), "output_padding": (0,)},
     {"padding": "SAME", "strides": 2}, "padding differs"),
    ("conv_transpose", {"kernel_size": (2,), "stride": (2,), "padding": (0,), "output_padding": (0,)},
     {"padding": "VALID", "strides": 2}, None),
    ("attention", {"num_heads": 4}, {"num_heads": 2}, "num_heads"),
    ("embedding", {"max_norm": 1.0}, {}, "max_norm"),
    ("recurrent", {}, {"gate_fn": "hard_sigmoid()", "activation_fn": "tanh()"}, "gate_fn"),
    ("linear", {}, {}, None),
])
def test_hyper_parameter_warnings(kind, t_attrs, f_attrs, expected):
    found = porting.hyper_parameter_warnings("layer", kind, "TorchLayer", t_attrs, "FlaxLayer", f_attrs)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0] and found[0].startswith("layer: ")


def test_report_and_error_text():
    report = porting.PortReport(
        "torch_to_flax", ("params/a/kernel",),
        (porting.Problem("missing", "b.weight", detail="Flax params/b/kernel (3, 4)"),),
        (porting.Problem("unexpected", "c.bias", detail="torch Linear (3,)"),),
        (porting.Problem("mismatched", "d.weight", "torch Linear (8, 4)", "params/d/kernel (4, 6)",
                         "canonical shapes differ"),),
        ("d: epsilon differs",), ("lossy fold",))
    assert not report.ok
    text = str(report)
    assert text.splitlines()[0] == "torch_to_flax: 1 converted, 1 missing, 1 unexpected, 1 mismatched"
    assert "mismatched: d.weight, source torch Linear (8, 4), destination params/d/kernel (4, 6)" in text
    err = porting.PortError(report, "hint")
    assert isinstance(err, ValueError) and err.report is report and str(err).endswith("hint")
    assert porting.PortReport("x").ok


# ------------------------------------------------------- the Flax structure


def test_trace_records_cells_under_rnn_and_bidirectional():
    linen = pytest.importorskip("flax.linen")
    import jax.numpy as jnp

    from xinit.flax import trace

    class M(linen.Module):
        @linen.compact
        def __call__(self, x):
            a = linen.RNN(linen.LSTMCell(5), name="lstm")(x)
            b = linen.Bidirectional(linen.RNN(linen.GRUCell(4)), linen.RNN(linen.GRUCell(4)),
                                    name="bi")(x)
            return a, b, linen.ConvTranspose(3, (3,), transpose_kernel=True, name="up")(x)

    t = trace(M(), jnp.ones((2, 7, 6)))
    cells = {p: layer.cell_of for p, layer in t.layers.items() if layer.kind == "recurrent"}
    assert cells == {("LSTMCell_0",): (("lstm",), False), ("GRUCell_0",): (("bi",), False),
                     ("GRUCell_1",): (("bi",), True)}
    up = t.layer(("up",))
    assert up.attrs["transpose_kernel"] is True and up.attrs["kernel_size"] == (3,)
    assert t.layer(("LSTMCell_0",)).auto_index == 0 and t.layer(("lstm",)).auto_index is None
    assert t.variables["params"]["up"]["kernel"].shape == (3, 3, 6)  # abstract, (k, out, in)
    with pytest.raises(TypeError, match="flax.linen Module"):
        trace(object())


def test_initialize_reads_kinds_from_the_traced_model(restore_registry):
    """With the module, a transposed kernel and a declared (out, in) layer get torch's fans."""
    linen = pytest.importorskip("flax.linen")
    torch = pytest.importorskip("torch")
    import jax
    import jax.numpy as jnp

    import xinit.flax as xf
    import xinit.torch as xt

    class OutIn(linen.Module):  # a Flax layer that stores (out, in)
        features: int

        @linen.compact
        def __call__(self, x):
            w = self.param("kernel", linen.initializers.zeros, (self.features, x.shape[-1]))
            return x @ w.T

    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            y = OutIn(30, name="proj")(x)
            return y, linen.ConvTranspose(8, (3, 3), transpose_kernel=True, name="up")(x[:, None, None])

    x = jnp.ones((1, 400))
    xinit.register_layer(OutIn, kind="linear", layout=xinit.TORCH)
    traced = xf.trace(Net(), x)
    kinds = {p.name: (p.kind, p.shape) for p in xf.describe(traced)}
    assert kinds["proj.weight"] == ("linear", (30, 400))
    assert kinds["up.weight"] == ("conv_transpose", (400, 8, 3, 3))  # torch's (in, out, k)
    out = xf.initialize(traced, "torch_default", key=0)
    ref = xt.initialize(torch.nn.ModuleDict({"proj": torch.nn.Linear(400, 30)}), key=0)
    assert np.array_equal(np.asarray(out["params"]["proj"]["kernel"]), ref.proj.weight.detach().numpy())
    bound = 1 / math.sqrt(8 * 9)  # torch's ConvTranspose fan_in: out * k * k
    assert float(jnp.abs(out["params"]["up"]["kernel"]).max()) <= bound
    # the bare tree can only guess: the (out, in) kernel is read as (in, out)
    bare = {p.name: p.shape for p in xf.describe(jax.eval_shape(Net().init, jax.random.key(0), x))}
    assert bare["proj.weight"] == (400, 30)


def test_recurrent_cells_get_torch_roles_and_hidden_size():
    linen = pytest.importorskip("flax.linen")
    import jax.numpy as jnp

    import xinit.flax as xf

    class M(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.RNN(linen.LSTMCell(5), name="lstm")(x)

    params = xf.describe(xf.trace(M(), jnp.ones((2, 3, 4))))
    roles = {(p.name, p.role) for p in params}
    assert ("LSTMCell_0.ii.weight", "weight_ih") in roles and ("LSTMCell_0.hf.bias", "bias_hh") in roles
    assert {p.kind for p in params} == {"recurrent"} and all(p.attr("hidden_size") == 5 for p in params)
    values = xf.initialize(xf.trace(M(), jnp.ones((2, 3, 4))), "torch_default", key=1)
    leaves = [np.asarray(a) for a in jax_leaves(values)]
    assert max(float(np.abs(a).max()) for a in leaves) <= 1 / math.sqrt(5)  # U(+-1/sqrt(hidden))


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)
