"""xinit.flax.model: recipes on linen trees (real, abstract, boxed) and nnx States/Modules."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from flax.core import FrozenDict
from scipy import stats

from xinit.core.recipes import Recipe, Rule, UnmatchedError, torch_default
from xinit.core.specs import Normal
from xinit.flax.model import canonical_name, describe, initialize, plan

P_MIN = 1e-4


class Zoo(nn.Module):
    @nn.compact
    def __call__(self, x, img):
        x = nn.Dense(20_000, name="fc")(x)  # in = 8
        e = nn.Embed(20_000, 2, name="emb")(jnp.zeros((1,), jnp.int32))
        x = nn.LayerNorm(name="ln")(x)
        y = nn.Conv(2_000, (3, 3), name="conv")(img)  # in = 3
        y = nn.BatchNorm(use_running_average=True, name="bn")(y)
        z = nn.ConvTranspose(5_000, (2, 2), name="ConvTranspose_0")(img)
        return x, e, y, z


def _abstract():
    return jax.eval_shape(Zoo().init, jax.random.key(0), jnp.ones((1, 8)), jnp.ones((1, 4, 4, 3)))


def ks(a, b):
    assert a.size >= 20_000 and b.size >= 20_000
    return stats.ks_2samp(np.ravel(a), np.ravel(b)).pvalue


def test_abstract_tree_gets_torch_default_of_each_layer():
    abstract = _abstract()
    v = initialize(abstract, "torch_default", key=1)
    assert isinstance(abstract["params"]["fc"]["kernel"], jax.ShapeDtypeStruct)  # input untouched
    p, s = v["params"], v["batch_stats"]
    torch.manual_seed(0)
    cases = [
        (p["fc"]["kernel"], torch.nn.Linear(8, 20_000).weight, 1 / math.sqrt(8)),
        (p["fc"]["bias"], torch.nn.Linear(8, 20_000).bias, 1 / math.sqrt(8)),
        (p["conv"]["kernel"], torch.nn.Conv2d(3, 2_000, 3).weight, 1 / math.sqrt(27)),
        (p["conv"]["bias"], None, 1 / math.sqrt(27)),
        # flax ConvTranspose kernel (kh, kw, in, out) is torch's (in, out, kh, kw): fan_in = out*k
        (p["ConvTranspose_0"]["kernel"], torch.nn.ConvTranspose2d(3, 5_000, 2).weight,
         1 / math.sqrt(20_000)),
    ]
    for got, ref, bound in cases:
        got = np.asarray(got)
        assert np.abs(got).max() <= bound and np.abs(got).max() > 0.99 * bound
        if ref is not None:
            assert ks(got, ref.detach().numpy()) > P_MIN
    emb = np.asarray(p["emb"]["embedding"])
    assert ks(emb, torch.nn.Embedding(20_000, 2).weight.detach().numpy()) > P_MIN
    np.testing.assert_array_equal(p["ln"]["scale"], np.ones(20_000, np.float32))
    np.testing.assert_array_equal(p["bn"]["bias"], np.zeros(2_000, np.float32))
    np.testing.assert_array_equal(s["bn"]["mean"], np.zeros(2_000, np.float32))
    np.testing.assert_array_equal(s["bn"]["var"], np.ones(2_000, np.float32))
    assert jax.tree.structure(v) == jax.tree.structure(jax.tree.map(lambda x: 0, abstract))


def test_kinds_and_names_inferred_from_tree():
    names = {p.name: (p.kind, p.role, p.shape) for p in describe(_abstract())}
    assert names["fc.weight"] == ("linear", "weight", (20_000, 8))
    assert names["conv.weight"] == ("conv", "weight", (2_000, 3, 3, 3))
    assert names["ConvTranspose_0.weight"] == ("conv_transpose", "weight", (3, 5_000, 2, 2))
    assert names["emb.weight"] == ("embedding", "weight", (20_000, 2))
    assert names["bn.running_var"][:2] == ("norm", "running_var")
    assert names["bn.bias"][:2] == ("norm", "bias")
    assert names["ln.weight"][:2] == ("norm", "weight")
    assert canonical_name(("a", "b", "kernel")) == "a.b.weight"
    assert "fc.bias" in str(plan(_abstract(), "transformer"))


def test_real_tree_not_mutated_and_frozen_dict_kept():
    real = nn.Dense(3).init(jax.random.key(0), jnp.ones((1, 4)))
    before = np.asarray(real["params"]["kernel"]).copy()
    out = initialize(FrozenDict(real), "torch_default", key=2)
    assert isinstance(out, FrozenDict)
    np.testing.assert_array_equal(real["params"]["kernel"], before)
    assert not np.array_equal(out["params"]["kernel"], before)
    # a params-only tree (no collection level) gives the same numbers
    only = initialize(real["params"], "torch_default", key=2)
    np.testing.assert_array_equal(only["kernel"], out["params"]["kernel"])


def test_boxed_partitioned_leaves_stay_boxed():
    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4, kernel_init=nn.with_partitioning(nn.initializers.zeros, ("a", "b")))(x)

    abstract = jax.eval_shape(M().init, jax.random.key(0), jnp.ones((1, 3)))
    out = initialize(abstract, "torch_default", key=0)
    k = out["params"]["Dense_0"]["kernel"]
    assert isinstance(k, nn.Partitioned) and k.names == ("a", "b")
    assert np.abs(np.asarray(k.value)).max() > 0


class _Alpha(nn.Module):
    @nn.compact
    def __call__(self, x):
        self.param("alpha", nn.initializers.ones, (3,))
        return nn.Dense(2)(x)


def test_unmatched_params_error_ignore_and_zeros():
    v = _Alpha().init(jax.random.key(0), jnp.ones((1, 3)))
    with pytest.raises(UnmatchedError, match="alpha"):
        initialize(v, "torch_default", key=0)
    out = initialize(v, "torch_default", key=0, unmatched="ignore")
    np.testing.assert_array_equal(out["params"]["alpha"], np.ones(3))
    out = initialize(v, "torch_default", key=0, unmatched="zeros")
    np.testing.assert_array_equal(out["params"]["alpha"], np.zeros(3))
    assert np.abs(np.asarray(out["params"]["Dense_0"]["kernel"])).max() > 0
    custom = Recipe("c", (Rule(Normal(0.0, 1.0), name="alpha"),)) + torch_default()
    out = initialize(v, custom, key=0)
    assert not np.array_equal(out["params"]["alpha"], np.ones(3))
    with pytest.raises(ValueError, match=r"unmatched must be one of \['error', 'ignore', 'zeros'\]"):
        initialize(v, "torch_default", key=0, unmatched="skip")


def test_unmatched_abstract_params_warn_when_ignored_and_are_filled_with_zeros():
    abstract = jax.eval_shape(_Alpha().init, jax.random.key(0), jnp.ones((1, 3)))
    with pytest.warns(UserWarning, match="alpha.*stay abstract"):
        out = initialize(abstract, "torch_default", key=0, unmatched="ignore")
    assert isinstance(out["params"]["alpha"], jax.ShapeDtypeStruct)
    out = initialize(abstract, "torch_default", key=0, unmatched="zeros")
    np.testing.assert_array_equal(out["params"]["alpha"], np.zeros(3))


def test_initialize_without_a_key_says_to_pass_one():
    v = jax.eval_shape(nn.Dense(3).init, jax.random.key(0), jnp.ones((1, 2)))
    with pytest.raises(TypeError, match="needs key="):
        initialize(v)
    assert initialize(v, key=0)["params"]["kernel"].shape == (2, 3)  # recipe: torch_default


def test_bfloat16_params():
    abstract = jax.eval_shape(nn.Dense(300, param_dtype=jnp.bfloat16).init, jax.random.key(0),
                              jnp.ones((1, 100)))
    out = initialize(abstract, "torch_default", key=0)
    k = out["params"]["kernel"]
    bound = float(jnp.bfloat16(0.1))  # the bound rounded to bfloat16, as torch
    assert k.dtype == jnp.bfloat16 and float(jnp.abs(k.astype(jnp.float32)).max()) <= bound


def test_nnx_state_is_new_and_module_is_updated_in_place():
    model = nnx.Sequential(nnx.Linear(16, 32, rngs=nnx.Rngs(0)), nnx.BatchNorm(32, rngs=nnx.Rngs(0)))
    state = nnx.state(model)
    before = np.asarray(model.layers[0].kernel[...]).copy()
    new = initialize(state, "torch_default", key=3)
    assert isinstance(new, nnx.State)
    np.testing.assert_array_equal(model.layers[0].kernel[...], before)  # nothing mutated
    k = np.asarray(new["layers"][0]["kernel"][...])
    assert np.abs(k).max() <= 0.25 and not np.array_equal(k, before)
    np.testing.assert_array_equal(new["layers"][1]["var"][...], np.ones(32))
    assert initialize(model, "torch_default", key=3) is model
    np.testing.assert_array_equal(model.layers[0].kernel[...], k)
    names = [p.name for p in describe(model)]
    assert "layers.0.weight" in names and "layers.1.running_mean" in names


def test_nnx_abstract_module_state():
    abstract = nnx.eval_shape(lambda: nnx.ConvTranspose(3, 8, (2, 2), rngs=nnx.Rngs(0)))
    kinds = {p.name: p.kind for p in describe(abstract)}
    assert kinds["weight"] == "conv_transpose"
    # an nnx State has no layer classes: a rank-4 kernel there is a plain conv
    assert {p.name: p.kind for p in describe(nnx.state(abstract))}["weight"] == "conv"
    model = initialize(abstract, "torch_default", key=0)
    k = np.asarray(model.kernel[...])
    assert k.shape == (2, 2, 3, 8)
    assert 0.99 / math.sqrt(32) < np.abs(k).max() <= 1 / math.sqrt(32)  # torch's reversed fans


def test_rename_and_type_errors():
    v = jax.eval_shape(nn.Dense(3, name="blocks_0").init, jax.random.key(0), jnp.ones((1, 2)))
    names = [p.name for p in describe(v, rename=lambda n: n.replace("_", "."))]
    assert names  # names are whatever rename returns
    with pytest.raises(TypeError, match="initialize expects"):
        initialize([1, 2], "torch_default", key=0)


class _Mixed(nn.Module):
    """Transposed kernels, an embedding with a zeroed padding row, biases, norms."""

    @nn.compact
    def __call__(self, x):
        e = nn.Embed(50, 24, name="emb")(x)
        h = nn.Dense(150, name="fc")(e)  # canonical (150, 24): transposed in 3 blocks
        h = nn.LayerNorm(name="ln")(h)
        return nn.Conv(70, (3, 3), name="conv")(h[..., None, :5])


def _mixed_abstract(dtype):
    return jax.eval_shape(_Mixed().init, jax.random.key(0), jnp.zeros((2, 3), jnp.int32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
def test_host_and_device_assembly_agree_bit_for_bit(dtype, monkeypatch):
    """The CPU path (numpy views of a host buffer JAX adopts) and the JAX-ops path (accelerators) give the same arrays,
    also when parameters span several chunks."""
    from xinit.core import packing
    from xinit.core.recipes import Derived, Resolved
    from xinit.flax import model as fm

    class ZeroRow2(Derived):  # row 2 of the canonical (torch-layout) weight zeroed
        def resolve(self, param):
            return Resolved(Normal(0.0, 1.0), (2,))

    monkeypatch.setattr(packing, "MAX_ROWS", 8)  # 2 Ki-element chunks: the embedding spans chunks
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype), _mixed_abstract(dtype))
    recipe = Recipe("rows", (Rule(ZeroRow2(), kind="embedding"), Rule(ZeroRow2(), name="fc.weight")))
    recipe = recipe + torch_default()
    host = initialize(abstract, recipe, key=5)
    assert not np.asarray(host["params"]["emb"]["embedding"])[2].any()
    assert not np.asarray(host["params"]["fc"]["kernel"])[:, 2].any()  # flax kernel = weight.T
    monkeypatch.setattr(fm.host_memory, "on_host", lambda: False)
    device = initialize(abstract, recipe, key=5)
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(device), strict=True):
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_initialize_compiles_nothing_per_shape():
    """Two models with all-new shapes: the second compiles nothing but xinit's own bucketed
    programs (no per-parameter JAX operations)."""
    from xinit.core.debug import compile_count

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, _d, **_k: compiles.append(event)
        if event == "/jax/core/compile/backend_compile_duration" else None
    )

    class Widths(nn.Module):
        widths: tuple

        @nn.compact
        def __call__(self, x):
            for i, f in enumerate(self.widths):
                x = nn.Dense(f, name=f"d{i}")(x)
            return x

    def run(widths):
        a = jax.eval_shape(Widths(widths).init, jax.random.key(0), jnp.ones((1, 2)))
        before, ours = len(compiles), compile_count()
        jax.block_until_ready(initialize(a, "torch_default", key=0))
        return len(compiles) - before, compile_count() - ours

    run((3, 5, 7, 11, 13))
    total, ours = run((17, 19, 23, 29, 31, 37, 41))
    assert total == ours <= 2


def test_boxed_leaves_inside_an_explicit_mesh_keep_their_boxes_and_are_placed():
    # xinit 0.1 raised here: unboxing applied the box's sharding constraint to the abstract leaf
    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4, kernel_init=nn.with_partitioning(nn.initializers.zeros, (None, "m")))(x)

    abstract = jax.eval_shape(M().init, jax.random.key(0), jnp.ones((1, 3)))
    mesh = jax.make_mesh((1,), ("m",), axis_types=(jax.sharding.AxisType.Explicit,))
    with jax.set_mesh(mesh):
        out = initialize(abstract, key=0)
    k = out["params"]["Dense_0"]["kernel"]
    assert isinstance(k, nn.Partitioned) and k.names == (None, "m")
    assert k.value.sharding.spec == jax.sharding.PartitionSpec(None, "m")
    plain = initialize(abstract, key=0)["params"]["Dense_0"]["kernel"].value
    np.testing.assert_array_equal(k.value, plain)


def test_rules_naming_a_class_match_flax_subclasses_too():
    """The same class-matching as in torch: the Flax adapter records each layer's lineage."""

    class ScaledLinear(nnx.Linear):
        pass

    model = nnx.Sequential(ScaledLinear(4, 6, rngs=nnx.Rngs(0)), nnx.LayerNorm(6, rngs=nnx.Rngs(0)))
    params = {p.name: p for p in describe(model)}
    kernel = params["layers.0.weight"]
    assert kernel.layer_type == "ScaledLinear" and "flax.nnx.nn.linear.Linear" in kernel.lineage
    mine = Recipe("mine", (Rule(Normal(0.0, 3.0), kind="flax.nnx.nn.linear.Linear", role="weight"),))
    initialize(model, mine + torch_default(), key=0)
    assert float(jnp.std(model.layers[0].kernel[...])) > 1.0
    assert "layers.1.weight" not in [p.name for p in describe(model) if Rule(Normal(0.0, 1.0),
                                                                          kind="Linear").matches(p)]
