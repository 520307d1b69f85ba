"""The same numbers in PyTorch and Flax: xinit.flax against xinit.torch and torch.nn.init.

* Bit identity: for the same key and arguments, every initializer of
  ``xinit.flax.torch_init`` equals ``xinit.torch``'s weight permuted into flax layout, bit for
  bit: Dense ``(in, out)`` = ``W.T``, Conv1d/2d/3d ``(*k, in, out)`` =
  ``W.permute(2, ..., 1, 0)``, Embed (``layout=IDENTITY``) = ``W``. This includes
  ``orthogonal`` on conv kernels: both adapters draw the canonical (torch-layout)
  matrix and only the flax one transposes afterwards.
* Inside a user's ``jit`` the sampler is traced into the user's program. The
  random bits stay the same; the floats agree within ``ULP_JIT`` units in the last
  place of the array's largest magnitude (measured: <= 1 for float32, float16 and
  bfloat16; <= 9 for float64, in the truncated normals, whose inverse CDF XLA
  may fold differently).
* Statistics: the flax initializers against ``torch.nn.init`` (and the torch
  layer presets against torch's own layers), by two-sample KS (p > 1e-4 on
  >= 20k values, fixed seeds), bounds and standard deviations.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")
nn = pytest.importorskip("flax.linen")

import xinit.torch as xt  # noqa: E402
from xinit.flax import torch_init as ti  # noqa: E402

KEY = jax.random.key(20260522)
P_MIN = 1e-4
ULP_JIT = {"f16": 2, "bf16": 2, "f32": 2, "f64": 16}

TORCH_DTYPES = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16,
                "f16": torch.float16}
JAX_DTYPES = {"f32": jnp.float32, "f64": jnp.float64, "bf16": jnp.bfloat16, "f16": jnp.float16}

# layer -> (torch weight shape, permutation torch -> flax, flax layout)
LAYERS = {
    "dense": ((30, 20), (1, 0), ti.FLAX),
    "conv1d": ((16, 8, 5), (2, 1, 0), ti.FLAX),
    "conv2d": ((16, 8, 3, 3), (2, 3, 1, 0), ti.FLAX),
    "conv3d": ((8, 4, 3, 2, 3), (2, 3, 4, 1, 0), ti.FLAX),
    "embed": ((50, 12), (0, 1), ti.IDENTITY),
}
# drop-in -> (args, layers it applies to, takes a key)
ALL = tuple(LAYERS)
TWO_D = ("dense", "embed")
CONV = ("conv1d", "conv2d", "conv3d")
DROP_INS = {
    "uniform": ((-0.5, 0.5), ALL, True),
    "normal": ((0.1, 0.3), ALL, True),
    "trunc_normal": ((0.0, 0.5, -0.6, 0.9), ALL, True),
    "constant": ((0.3,), ALL, False),
    "ones": ((), ALL, False),
    "zeros": ((), ALL, False),
    "eye": ((), TWO_D, False),
    "dirac": ((2,), CONV, False),
    "xavier_uniform": ((1.5,), ALL, True),
    "xavier_normal": ((0.7,), ALL, True),
    "kaiming_uniform": ((0.2, "fan_out", "leaky_relu"), ALL, True),
    "kaiming_normal": ((0, "fan_in", "relu"), ALL, True),
    "orthogonal": ((1.3,), ALL, True),
    "sparse": ((0.3, 0.05), TWO_D, True),
}
# (name, layer, dtype) cases: every drop-in on every layer it fits in float32, and
# the random ones also in float64/bfloat16/float16 on a Dense and a Conv2d kernel.
BIT_CASES = [(n, layer, "f32") for n, (_, layers, _) in DROP_INS.items() for layer in layers]
BIT_CASES += [
    (n, layer, dt)
    for n, (_, layers, random) in DROP_INS.items() if random
    for layer in ("dense", "conv2d") if layer in layers
    for dt in ("f64", "bf16", "f16")
]


def torch_weight(name, layer, dt):
    shape, _, _ = LAYERS[layer]
    args, _, random = DROP_INS[name]
    w = torch.empty(shape, dtype=TORCH_DTYPES[dt])
    fn = getattr(xt, name + "_")
    return fn(w, *args, key=KEY) if random else fn(w, *args)


def flax_kernel(name, layer, dt, key=KEY):
    shape, perm, layout = LAYERS[layer]
    args, _, _ = DROP_INS[name]
    init = getattr(ti, name)(*args, layout=layout)
    return init(key, tuple(shape[p] for p in perm), JAX_DTYPES[dt])


def as_numpy(t):
    """A torch tensor as numpy; bf16 widened to float32 (exact)."""
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def as_same(x, dt):
    x = np.asarray(x)
    return x.astype(np.float32) if dt == "bf16" else x


@pytest.mark.parametrize("name, layer, dt", BIT_CASES, ids=["-".join(c) for c in BIT_CASES])
def test_flax_kernel_is_the_torch_weight_permuted_bit_for_bit(name, layer, dt):
    w = torch_weight(name, layer, dt)
    k = flax_kernel(name, layer, dt)
    _, perm, _ = LAYERS[layer]
    expected = as_numpy(w.permute(*perm).contiguous())
    got = as_same(k, dt)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got.view(np.uint8), expected.view(np.uint8))


@pytest.mark.parametrize("layer", ["conv1d", "conv2d", "conv3d"])
def test_orthogonal_conv_kernel_is_orthogonal_in_torch_and_jax_flattenings(layer):
    k = np.asarray(flax_kernel("orthogonal", layer, "f64"), np.float64) / 1.3
    out = k.shape[-1]
    torch_view = np.moveaxis(k, (-1, -2), (0, 1)).reshape(out, -1)  # (out, in * prod(k))
    jax_view = k.reshape(-1, out).T  # jax.nn.initializers.orthogonal(column_axis=-1)
    for m in (torch_view, jax_view):
        small = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
        assert np.allclose(small, np.eye(len(small)), atol=1e-12)


# ------------------------------------------------------------ inside a user's jit


def ulps(got, ref, dt):
    """max |got - ref| in units in the last place of ref's largest magnitude."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    scale = np.abs(ref).max()
    ulp = float(jnp.finfo(JAX_DTYPES[dt]).eps) * 2.0 ** np.floor(np.log2(scale)) if scale else 1.0
    return np.abs(got - ref).max() / ulp


JIT_CASES = [
    (n, layer, dt)
    for n, (_, layers, random) in DROP_INS.items() if random
    for layer in ("dense", "conv2d") if layer in layers
    for dt in ("f32", "f64", "bf16")
]


@pytest.mark.parametrize("name, layer, dt", JIT_CASES, ids=["-".join(c) for c in JIT_CASES])
def test_inside_jit_the_floats_agree_with_torch_within_a_few_ulp(name, layer, dt):
    shape, perm, layout = LAYERS[layer]
    args, _, _ = DROP_INS[name]
    init = getattr(ti, name)(*args, layout=layout)
    fshape = tuple(shape[p] for p in perm)
    jitted = jax.jit(lambda k: init(k, fshape, JAX_DTYPES[dt]))(KEY)
    expected = as_numpy(torch_weight(name, layer, dt).permute(*perm).contiguous())
    assert ulps(jitted, expected, dt) <= ULP_JIT[dt]


@pytest.mark.parametrize("shape", [(20, 30), (3, 3, 8, 16)], ids=["dense", "conv2d"])
def test_inside_jit_the_random_bits_are_torchs(shape):
    # U[0, 1) values are the random mantissa bits themselves: equal values, equal bits.
    tshape = (shape[-1], shape[-2], *shape[:-2])
    perm = (*range(2, len(shape)), 1, 0)
    w = xt.uniform_(torch.empty(tshape), 0.0, 1.0, key=KEY).permute(*perm).numpy()
    jitted = jax.jit(lambda k: ti.uniform(0.0, 1.0)(k, shape))(KEY)
    assert np.array_equal(np.asarray(jitted), w)


class _Net(nn.Module):
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(param_dtype=self.dtype, dtype=jnp.float32)
        x = nn.Conv(16, (3, 3), kernel_init=ti.trunc_normal(0.0, 0.1, -0.15, 0.2),
                    bias_init=ti.conv_bias(27), **kw)(x)
        x = nn.Dense(64, kernel_init=ti.kaiming_normal(nonlinearity="relu"),
                     bias_init=ti.uniform(-0.3, 0.7), **kw)(x.mean(axis=(1, 2)))
        return nn.Dense(8, kernel_init=ti.xavier_normal(), bias_init=ti.normal(0.0, 0.1), **kw)(x)


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")
@pytest.mark.parametrize("dt", ["f32", "f64", "bf16"])
def test_model_init_under_jit_agrees_with_eager_init_within_a_few_ulp(dt):
    model = _Net(JAX_DTYPES[dt])
    x = jnp.ones((2, 6, 6, 3))
    eager = model.init(KEY, x)["params"]  # linen calls the initializers eagerly here
    jitted = jax.jit(model.init)(KEY, x)["params"]
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(eager),
                            jax.tree.leaves(jitted), strict=True):
        assert a.dtype == b.dtype == np.dtype(JAX_DTYPES[dt]), path
        assert ulps(b, a, dt) <= ULP_JIT[dt], path


# ------------------------------------------------------------ torch layer defaults


def _kernel_bound(fan):
    gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))  # calculate_gain('leaky_relu', sqrt(5))
    return math.sqrt(3.0) * gain / math.sqrt(fan)


PRESET_DTYPES = ["f32", "f64", "bf16"]


@pytest.mark.parametrize("dt", PRESET_DTYPES)
@pytest.mark.parametrize("fan_in", [20, 100, 400], ids=lambda f: f"in{f}")
def test_torch_linear_kernel_is_kaiming_uniform_sqrt5_bit_for_bit(fan_in, dt):
    w = xt.kaiming_uniform_(torch.empty(30, fan_in, dtype=TORCH_DTYPES[dt]), a=math.sqrt(5), key=KEY)
    k = ti.linear_kernel()(KEY, (fan_in, 30), JAX_DTYPES[dt])
    assert np.array_equal(as_same(k, dt), as_numpy(w.T.contiguous()))


def test_torch_linear_kernel_float64_bound_goes_through_the_kaiming_formula():
    fan_in = 400
    assert _kernel_bound(fan_in) != 1 / math.sqrt(fan_in)  # the two bounds differ by an ulp here
    k = np.asarray(ti.linear_kernel()(KEY, (fan_in, 30), jnp.float64))
    via_kaiming = xt.kaiming_uniform_(torch.empty(30, fan_in, dtype=torch.float64), a=math.sqrt(5),
                                      key=KEY).T.numpy()
    b = 1 / math.sqrt(fan_in)
    via_one_over = xt.uniform_(torch.empty(30, fan_in, dtype=torch.float64), -b, b, key=KEY).T.numpy()
    assert np.array_equal(k, via_kaiming) and not np.array_equal(k, via_one_over)


BIAS_PRESETS = {
    "linear": (ti.linear_bias, 400),
    "conv": (ti.conv_bias, 4 * 3 * 3),
    "conv_transpose": (ti.conv_transpose_bias, 32 * 3 * 3),
    "zero-fan": (ti.linear_bias, 0),
}


@pytest.mark.parametrize("dt", PRESET_DTYPES)
@pytest.mark.parametrize("case", BIAS_PRESETS)
def test_torch_bias_presets_are_uniform_one_over_sqrt_fan_in_bit_for_bit(case, dt):
    factory, fan_in = BIAS_PRESETS[case]
    bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
    expected = xt.uniform_(torch.empty(64, dtype=TORCH_DTYPES[dt]), -bound, bound, key=KEY)
    got = factory(fan_in)(KEY, (64,), JAX_DTYPES[dt])
    assert np.array_equal(as_same(got, dt), as_numpy(expected))
    assert (np.abs(as_same(got, dt)) <= bound).all()


def test_torch_conv_kernel_matches_a_grouped_conv2d():
    w = xt.kaiming_uniform_(torch.empty(32, 4, 3, 3), a=math.sqrt(5), key=KEY)  # Conv2d(16, 32, 3, groups=4)
    k = np.asarray(ti.conv_kernel()(KEY, (3, 3, 4, 32)))  # flax Conv(32, feature_group_count=4)
    assert np.array_equal(k, w.permute(2, 3, 1, 0).numpy())
    assert np.abs(k).max() <= 1 / 6  # torch: 1/sqrt(in/groups * 3 * 3)


def test_torch_conv_transpose_kernel_reads_torchs_reversed_fans():
    layer = torch.nn.ConvTranspose2d(16, 32, 3)  # weight (in, out, kh, kw) = (16, 32, 3, 3)
    w = xt.kaiming_uniform_(torch.empty_like(layer.weight), a=math.sqrt(5), key=KEY)
    k = np.asarray(ti.conv_transpose_kernel()(KEY, (3, 3, 16, 32)))  # flax (*k, in, out)
    assert np.array_equal(k, w.detach().permute(2, 3, 0, 1).numpy())
    bound = 1 / math.sqrt(32 * 9)
    assert bound * 0.99 < np.abs(k).max() <= bound
    assert bound * 0.99 < float(layer.weight.detach().abs().max()) <= bound


def test_torch_embedding_is_the_torch_table_and_zeroes_the_padding_row():
    w = xt.normal_(torch.empty(50, 12), key=KEY)
    table = np.asarray(ti.embedding()(KEY, (50, 12)))
    assert np.array_equal(table, w.numpy())
    padded = np.asarray(ti.embedding(padding_idx=-1)(KEY, (50, 12)))
    theirs = torch.nn.Embedding(50, 12, padding_idx=-1).weight.detach().numpy()
    assert (padded[-1] == 0).all() and (theirs[-1] == 0).all()
    assert np.array_equal(padded[:-1], table[:-1])


# ------------------------------------------------------------ statistics vs torch.nn.init


def ks(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    assert min(a.size, b.size) >= 20_000
    return stats.ks_2samp(a, b).pvalue


STAT_SHAPE = {"dense": (300, 100), "conv2d": (64, 40, 3, 3)}  # torch weight shapes, >= 20k values
STAT_CASES = [
    (n, layer)
    for n, (_, _, random) in DROP_INS.items() if random and n != "sparse"
    for layer in STAT_SHAPE
]


@pytest.mark.parametrize("name, layer", STAT_CASES, ids=["-".join(c) for c in STAT_CASES])
def test_flax_initializers_are_distributed_as_torch_nn_init(name, layer):
    tshape = STAT_SHAPE[layer]
    args, _, _ = DROP_INS[name]
    theirs = getattr(torch.nn.init, name + "_")(torch.empty(tshape), *args,
                                                 generator=torch.Generator().manual_seed(0))
    perm = (*range(2, len(tshape)), 1, 0)
    ours = getattr(ti, name)(*args)(KEY, tuple(tshape[p] for p in perm))
    theirs, ours = theirs.numpy(), np.asarray(ours)
    assert ks(ours, theirs) > P_MIN
    assert abs(ours.std() / theirs.std() - 1) < 0.03
    assert abs(ours.mean() - theirs.mean()) < 0.05 * theirs.std() + 1e-3


def test_sparse_matches_torch_zero_pattern_per_input_and_values():
    gen = torch.Generator().manual_seed(0)
    reps = 10
    theirs = torch.cat([torch.nn.init.sparse_(torch.empty(300, 10), 0.3, 0.05, generator=gen).reshape(-1)
                        for _ in range(reps)]).numpy()
    ours = [np.asarray(ti.sparse(0.3, 0.05)(jax.random.key(i), (10, 300))) for i in range(reps)]
    for k in ours:  # flax (in, out): every input row has ceil(0.3 * out) zeros, as torch's columns
        assert ((k == 0).sum(axis=1) == math.ceil(0.3 * 300)).all()
    ours = np.concatenate([k.ravel() for k in ours])
    assert ks(ours[ours != 0], theirs[theirs != 0]) > P_MIN


LAYER_DEFAULTS = {
    # id: (torch layer factory, parameter, our initializer, flax shape of that parameter)
    "linear-weight": (lambda: torch.nn.Linear(400, 60), "weight", ti.linear_kernel(), (400, 60)),
    "linear-bias": (lambda: torch.nn.Linear(100, 20_000), "bias", ti.linear_bias(100), (20_000,)),
    "conv2d-weight": (lambda: torch.nn.Conv2d(24, 96, 3), "weight", ti.conv_kernel(), (3, 3, 24, 96)),
    "conv2d-bias": (lambda: torch.nn.Conv2d(4, 20_000, 3), "bias", ti.conv_bias(36), (20_000,)),
    "conv_transpose2d-weight": (lambda: torch.nn.ConvTranspose2d(96, 24, 3), "weight",
                                ti.conv_transpose_kernel(), (3, 3, 96, 24)),
    "embedding": (lambda: torch.nn.Embedding(400, 64), "weight", ti.embedding(), (400, 64)),
}


@pytest.mark.parametrize("case", LAYER_DEFAULTS)
def test_presets_are_distributed_as_torch_layer_defaults(case):
    make, param, init, shape = LAYER_DEFAULTS[case]
    torch.manual_seed(0)
    theirs = getattr(make(), param).detach().numpy()
    ours = np.asarray(init(KEY, shape))
    assert ks(ours, theirs) > P_MIN
    assert abs(ours.std() / theirs.std() - 1) < 0.03
    if case != "embedding":  # uniform: the same hard bound, reached by both
        assert np.abs(ours).max() <= np.abs(theirs).max() * (1 + 1e-3)
        assert np.abs(theirs).max() <= np.abs(ours).max() * (1 + 1e-3)


class _TorchLikeMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(256, kernel_init=ti.linear_kernel(),
                     bias_init=ti.linear_bias(fan_in=x.shape[-1]))(x)
        return nn.Dense(10, kernel_init=ti.linear_kernel(),
                        bias_init=ti.linear_bias(fan_in=256))(nn.relu(x))


def test_a_linen_model_with_torch_presets_starts_where_torch_starts():
    params = jax.jit(_TorchLikeMLP().init)(KEY, jnp.zeros((1, 784)))["params"]
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    pairs = [(params["Dense_0"]["kernel"], ref[0].weight.T, 784),
             (params["Dense_0"]["bias"], ref[0].bias, 784),
             (params["Dense_1"]["kernel"], ref[2].weight.T, 256),
             (params["Dense_1"]["bias"], ref[2].bias, 256)]
    for ours, theirs, fan_in in pairs:
        ours, theirs = np.asarray(ours), theirs.detach().numpy()
        assert ours.shape == theirs.shape
        bound = 1 / math.sqrt(fan_in)  # U(+-1/sqrt(fan_in)) for weight and bias alike
        assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
        if ours.size > 1000:
            assert np.abs(ours).max() > 0.99 * bound and np.abs(theirs).max() > 0.99 * bound
    x = np.random.default_rng(0).standard_normal((64, 784)).astype(np.float32)
    out = np.asarray(_TorchLikeMLP().apply({"params": params}, x))
    with torch.no_grad():
        ref_out = ref(torch.from_numpy(x)).numpy()
    assert abs(out.std() / ref_out.std() - 1) < 0.25  # same scale of activations
