"""xinit.flax on its own: the Initializer contract, layouts and fans, validation,
the JAX-native family against jax.nn.initializers, and Flax integration (linen,
nnx, jit, eval_shape, partitioning, out_sharding, dtypes).

Comparisons with torch (bit identity with xinit.torch, statistics against
torch.nn.init) live in test_cross_framework.py. Statistical tests use fixed keys
(deterministic outcomes) and >= 20k values per side with a KS threshold of
p > 1e-4, so agreeing distributions pass with a wide margin while a wrong scale,
fan, bound or truncation fails.
"""

from __future__ import annotations

import inspect
import math
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import xinit.flax as xf
from xinit.core import TORCH, Layout
from xinit.core.errors import BoundsError, ModeError, ShapeError, ZeroSizeError

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")

jinit = jax.nn.initializers
P_MIN = 1e-4
KEY = jax.random.key(0)

# (id, factory) for every public initializer factory, with default-ish arguments.
FACTORIES = {
    "uniform": lambda: xf.uniform(-0.5, 0.5),
    "normal": lambda: xf.normal(0.0, 0.02),
    "trunc_normal": lambda: xf.trunc_normal(0.0, 1.0, -2.0, 2.0),
    "constant": lambda: xf.constant(0.25),
    "ones": xf.ones,
    "zeros": xf.zeros,
    "eye": xf.eye,
    "dirac": xf.dirac,
    "xavier_uniform": xf.xavier_uniform,
    "xavier_normal": xf.xavier_normal,
    "kaiming_uniform": xf.kaiming_uniform,
    "kaiming_normal": xf.kaiming_normal,
    "orthogonal": xf.orthogonal,
    "sparse": lambda: xf.sparse(0.5),
    "variance_scaling": lambda: xf.variance_scaling(1.0, "fan_avg", "uniform"),
    "lecun_normal": xf.lecun_normal,
    "lecun_uniform": xf.lecun_uniform,
    "glorot_normal": xf.glorot_normal,
    "glorot_uniform": xf.glorot_uniform,
    "he_normal": xf.he_normal,
    "he_uniform": xf.he_uniform,
    "truncated_normal": xf.truncated_normal,
    "delta_orthogonal": xf.delta_orthogonal,
    "torch_linear_kernel": xf.torch_linear_kernel,
    "torch_linear_bias": lambda: xf.torch_linear_bias(16),
    "torch_conv_kernel": xf.torch_conv_kernel,
    "torch_conv_bias": lambda: xf.torch_conv_bias(16),
    "torch_conv_transpose_kernel": xf.torch_conv_transpose_kernel,
    "torch_conv_transpose_bias": lambda: xf.torch_conv_transpose_bias(16),
    "torch_embedding": xf.torch_embedding,
}
# A shape each factory accepts.
SHAPE_FOR = {"eye": (6, 4), "sparse": (6, 4), "dirac": (3, 3, 4, 8), "delta_orthogonal": (3, 3, 4, 8),
             "torch_linear_bias": (7,), "torch_conv_bias": (7,), "torch_conv_transpose_bias": (7,)}
DTYPES = {"f16": jnp.float16, "bf16": jnp.bfloat16, "f32": jnp.float32, "f64": jnp.float64}


def shape_of(name):
    return SHAPE_FOR.get(name, (3, 3, 4, 8))


def ks(a, b):
    return stats.ks_2samp(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()).pvalue


# ------------------------------------------------------------ the contract


def test_every_public_factory_is_in_the_table():
    public = {n for n in xf.__all__ if callable(getattr(xf, n)) and n[0].islower()}
    model_level = {"initialize", "plan", "describe", "canonical_name", "trace"}
    assert public - model_level == set(FACTORIES)


@pytest.mark.parametrize("name", FACTORIES)
def test_satisfies_the_jax_initializer_protocol(name):
    init = FACTORIES[name]()
    assert isinstance(init, jinit.Initializer)
    ours = list(inspect.signature(init).parameters)
    theirs = list(inspect.signature(jinit.Initializer.__call__).parameters)[1:]  # drop self
    assert ours == theirs == ["key", "shape", "dtype", "out_sharding"]
    assert inspect.signature(init).parameters["dtype"].default is None


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", FACTORIES)
def test_shape_and_dtype(name, dtype):
    shape = shape_of(name)
    out = FACTORIES[name]()(KEY, shape, dtype)
    assert out.shape == shape and out.dtype == np.dtype(dtype)
    assert bool(jnp.isfinite(out).all())


def test_float64_without_x64_comes_back_float64_and_leaves_the_config_alone():
    assert not jax.config.jax_enable_x64
    out = xf.kaiming_normal()(KEY, (64, 32), jnp.float64)
    assert out.dtype == np.float64 and not jax.config.jax_enable_x64
    # jax itself truncates to float32 here (with a warning)
    with pytest.warns(UserWarning, match="truncated to dtype float32"):
        assert jinit.he_normal()(KEY, (64, 32), jnp.float64).dtype == np.float32


def test_dtype_none_is_jax_default_float_and_the_factory_dtype_is_the_default():
    assert xf.normal()(KEY, (4,)).dtype == np.float32
    with jax.enable_x64(True):  # a local scope; as jax.nn.initializers, None follows x64
        assert xf.normal()(KEY, (4,)).dtype == jinit.normal()(KEY, (4,)).dtype == np.float64
    init = xf.normal(dtype=jnp.bfloat16)
    assert init(KEY, (4,)).dtype == jnp.bfloat16
    assert init(KEY, (4,), jnp.float32).dtype == np.float32
    assert xf.lecun_normal(dtype=jnp.float16)(KEY, (4, 4)).dtype == np.float16


@pytest.mark.parametrize("name", ["constant", "ones", "zeros", "eye"])
def test_deterministic_fills_take_integer_dtypes(name):
    shape = SHAPE_FOR.get(name, (3, 4))
    out = FACTORIES[name]()(KEY, shape, jnp.int32)
    assert out.dtype == np.int32


def test_same_key_same_values_different_key_different_values():
    init = xf.kaiming_uniform()
    a, b = init(KEY, (30, 20)), init(KEY, (30, 20))
    c = init(jax.random.key(1), (30, 20))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # raw uint32[2] keys and int seeds name the same key as jax.random.key
    assert np.array_equal(init(jax.random.PRNGKey(0), (30, 20)), a)
    assert np.array_equal(init(0, (30, 20)), a)


def test_initializers_are_hashable_comparable_and_picklable():
    a, b = xf.kaiming_uniform(a=1.0), xf.kaiming_uniform(a=1.0)
    assert a == b and hash(a) == hash(b) and a != xf.kaiming_uniform(a=2.0)
    assert xf.normal() != xf.normal(layout=TORCH)
    restored = pickle.loads(pickle.dumps(a))
    assert np.array_equal(restored(KEY, (5, 6)), a(KEY, (5, 6)))
    assert "kaiming_uniform" in repr(a) and "layout=FLAX" in repr(a)
    assert "lecun_normal" in repr(xf.lecun_normal())


def test_import_never_imports_torch():
    code = "import sys, xinit.flax; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_the_first_call_in_a_process_may_be_inside_jit():
    # The core's one-time self-check must not be traced into the user's program.
    code = (
        "import jax, flax.linen as nn, xinit.flax as xf\n"
        "m = nn.Dense(8, kernel_init=xf.kaiming_uniform())\n"
        "p = jax.jit(m.init)(jax.random.key(0), jax.numpy.ones((1, 4)))\n"
        "print(p['params']['kernel'].shape)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(4, 8)"


# ------------------------------------------------------------ layouts and fans


@pytest.mark.parametrize(
    "mode, fan", [("fan_in", 100), ("fan_out", 400)], ids=["fan_in", "fan_out"]
)
def test_dense_kernel_fans_follow_the_flax_layout(mode, fan):
    w = np.asarray(xf.kaiming_uniform(mode=mode)(KEY, (100, 400)))  # Dense(in=100, out=400)
    bound = math.sqrt(6 / fan)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.999 * bound  # 40k uniforms reach the bound; a wrong fan fails


@pytest.mark.parametrize(
    "shape, layout",
    [((400, 100), TORCH), ((100, 400), Layout(in_axis=0, out_axis=1)), ((400, 7, 100),
     Layout(in_axis=-1, out_axis=0))],
    ids=["torch", "explicit-axes", "explicit-axes-3d"],
)
def test_layout_argument_selects_the_fan_axes(shape, layout):
    w = np.asarray(xf.kaiming_normal(layout=layout)(KEY, shape))
    receptive = math.prod(shape) // 40_000
    assert abs(w.std() / math.sqrt(2 / (100 * receptive)) - 1) < 0.03


def test_conv_kernel_fans_are_receptive_times_channels():
    w = np.asarray(xf.xavier_uniform()(KEY, (3, 3, 16, 32)))  # Conv(16 -> 32, 3x3)
    bound = math.sqrt(6 / (9 * 16 + 9 * 32))
    assert bound * 0.99 < np.abs(w).max() <= bound


def test_vectors_use_the_identity_layout():
    assert np.array_equal(xf.normal()(KEY, (50,)), xf.normal(layout=TORCH)(KEY, (50,)))


def test_the_layout_changes_only_which_element_gets_which_value():
    a = xf.normal()(KEY, (3, 3, 8, 16))
    b = xf.normal(layout=TORCH)(KEY, (16, 8, 3, 3))
    assert np.array_equal(a, b.transpose(2, 3, 1, 0))


# ------------------------------------------------------------ validation


BAD_ARGS = {
    "uniform-a>b": (lambda: xf.uniform(1.0, 0.0), BoundsError),
    "normal-negative-std": (lambda: xf.normal(std=-1.0), BoundsError),
    "trunc_normal-zero-std": (lambda: xf.trunc_normal(std=0.0), ZeroSizeError),
    "trunc_normal-a>b": (lambda: xf.trunc_normal(a=1.0, b=-1.0), BoundsError),
    "dirac-groups-0": (lambda: xf.dirac(0), ZeroSizeError),
    "xavier-negative-gain": (lambda: xf.xavier_uniform(-1.0), BoundsError),
    "kaiming-bad-mode": (lambda: xf.kaiming_uniform(mode="fan_avg"), ModeError),
    "kaiming-bad-nonlinearity": (lambda: xf.kaiming_normal(nonlinearity="gelu"), ValueError),
    "kaiming-mode-not-str": (lambda: xf.kaiming_normal(mode=None), TypeError),
    "orthogonal-gain-str": (lambda: xf.orthogonal("x"), TypeError),
    "sparse-negative-std": (lambda: xf.sparse(0.1, -1.0), BoundsError),
    "layout-not-a-layout": (lambda: xf.normal(layout="flax"), TypeError),
    "dtype-not-a-dtype": (lambda: xf.normal(dtype="nope"), TypeError),
    "vs-bad-mode": (lambda: xf.variance_scaling(1.0, "fan_avgg", "normal"), ModeError),
    "vs-bad-distribution": (lambda: xf.variance_scaling(1.0, "fan_in", "cauchy"), ModeError),
    "vs-negative-scale": (lambda: xf.variance_scaling(-1.0, "fan_in", "normal"), BoundsError),
    "vs-axis-not-int": (lambda: xf.lecun_normal(in_axis="0"), TypeError),
    "truncated_normal-lower>upper": (lambda: xf.truncated_normal(1.0, lower=2, upper=1), BoundsError),
    "delta_orthogonal-bad-column_axis": (lambda: xf.delta_orthogonal(column_axis=2), ValueError),
    "torch_bias-negative-fan": (lambda: xf.torch_linear_bias(-1), ValueError),
    "torch_bias-fractional-fan": (lambda: xf.torch_conv_bias(2.5), ValueError),
    "torch_embedding-padding-str": (lambda: xf.torch_embedding(padding_idx="0"), TypeError),
}


@pytest.mark.parametrize("case", BAD_ARGS)
def test_bad_arguments_raise_at_construction(case):
    build, error = BAD_ARGS[case]
    with pytest.raises(error):
        build()


def test_jax_itself_validates_lazily_and_we_do_not():
    jinit.variance_scaling(1.0, "fan_avgg", "normal")  # builds fine in jax
    with pytest.raises(ValueError, match=r"mode must be one of \['fan_in', .*got mode='fan_avgg'"):
        xf.variance_scaling(1.0, "fan_avgg", "normal")


BAD_SHAPES = {
    "kaiming-1d": (xf.kaiming_uniform, (10,)),
    "xavier-0d": (xf.xavier_normal, ()),
    "lecun-1d": (xf.lecun_normal, (10,)),
    "eye-3d": (xf.eye, (2, 2, 2)),
    "dirac-2d": (xf.dirac, (4, 4)),
    "sparse-3d": (lambda: xf.sparse(0.1), (2, 2, 2)),
    "orthogonal-1d": (xf.orthogonal, (4,)),
    "vs-axis-out-of-range": (lambda: xf.lecun_normal(in_axis=(0, 5)), (4, 4)),
    "vs-fractional-fans": (lambda: xf.lecun_normal(in_axis=(0, 1), batch_axis=1), (4, 6)),
    "delta_orthogonal-2d": (xf.delta_orthogonal, (4, 8)),
    "delta_orthogonal-in>out": (xf.delta_orthogonal, (3, 3, 8, 4)),
    "torch_embedding-padding-out-of-range": (lambda: xf.torch_embedding(padding_idx=10), (10, 4)),
}


@pytest.mark.parametrize("case", BAD_SHAPES)
def test_unsuitable_shapes_raise_value_error_with_the_call_in_the_message(case):
    factory, shape = BAD_SHAPES[case]
    with pytest.raises(ValueError) as info:
        factory()(KEY, shape)
    assert str(tuple(shape)) in str(info.value)


@pytest.mark.parametrize("shape", [(4, 8), (3, 3, 8, 4)], ids=["2d", "in>out"])
def test_delta_orthogonal_shape_errors_are_jax_errors(shape):
    with pytest.raises(ValueError) as theirs:
        jinit.delta_orthogonal()(KEY, shape)
    with pytest.raises(ShapeError) as ours:
        xf.delta_orthogonal()(KEY, shape)
    assert str(theirs.value).split(".")[0].strip() in str(ours.value)


# ------------------------------------------------------------ JAX-native family vs jax

# (id, ours, jax's, shape): same distribution, compared by KS on >= 20k values.
NATIVE = [
    ("lecun_normal-dense", xf.lecun_normal(), jinit.lecun_normal(), (200, 150)),
    ("lecun_uniform-conv", xf.lecun_uniform(), jinit.lecun_uniform(), (3, 3, 64, 48)),
    ("glorot_normal-conv", xf.glorot_normal(), jinit.glorot_normal(), (3, 3, 64, 48)),
    ("glorot_uniform-dense", xf.glorot_uniform(), jinit.glorot_uniform(), (300, 100)),
    ("he_normal-conv1d", xf.he_normal(), jinit.he_normal(), (5, 64, 96)),
    ("he_uniform-conv3d", xf.he_uniform(), jinit.he_uniform(), (3, 3, 3, 32, 32)),
    ("vs-fan_geo_avg-normal", xf.variance_scaling(2.0, "fan_geo_avg", "normal"),
     jinit.variance_scaling(2.0, "fan_geo_avg", "normal"), (100, 400)),
    ("vs-fan_out-truncated", xf.variance_scaling(0.5, "fan_out", "truncated_normal"),
     jinit.variance_scaling(0.5, "fan_out", "truncated_normal"), (400, 100)),
    ("vs-torch-axes", xf.variance_scaling(1.0, "fan_in", "uniform", in_axis=1, out_axis=0),
     jinit.variance_scaling(1.0, "fan_in", "uniform", in_axis=1, out_axis=0), (64, 16, 5, 5)),
    ("vs-axis-groups", xf.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=-1),
     jinit.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=-1), (4, 5, 2000)),
    ("vs-batch-axis", xf.variance_scaling(1.0, "fan_avg", "truncated_normal", batch_axis=0),
     jinit.variance_scaling(1.0, "fan_avg", "truncated_normal", batch_axis=0), (16, 30, 50)),
    ("embed-default", xf.variance_scaling(1.0, "fan_in", "normal", out_axis=0),
     jinit.variance_scaling(1.0, "fan_in", "normal", out_axis=0), (1000, 64)),
    ("truncated_normal-default", xf.truncated_normal(), jinit.truncated_normal(), (200, 150)),
    ("truncated_normal-asym", xf.truncated_normal(0.5, lower=-1.0, upper=3.0),
     jinit.truncated_normal(0.5, lower=-1.0, upper=3.0), (200, 150)),
    ("orthogonal-vs-jax", xf.orthogonal(2.0), jinit.orthogonal(2.0), (3, 3, 64, 48)),
    ("xavier_uniform-is-glorot_uniform", xf.xavier_uniform(), jinit.glorot_uniform(), (300, 100)),
    ("kaiming_uniform-is-he_uniform", xf.kaiming_uniform(), jinit.he_uniform(), (3, 3, 64, 48)),
]


@pytest.mark.parametrize("ours, theirs, shape", [c[1:] for c in NATIVE], ids=[c[0] for c in NATIVE])
def test_jax_native_family_matches_jax_in_distribution(ours, theirs, shape):
    a = np.asarray(ours(jax.random.key(1), shape), np.float64)
    b = np.asarray(theirs(jax.random.key(2), shape), np.float64)
    assert a.size >= 20_000
    assert ks(a, b) > P_MIN
    assert abs(a.std() / b.std() - 1) < 0.03


@pytest.mark.parametrize(
    "ours, theirs, variance",
    [(xf.glorot_normal(), jinit.glorot_normal(), 1 / 250), (xf.he_normal(), jinit.he_normal(), 2 / 300)],
    ids=["glorot_normal", "he_normal"],
)
def test_truncated_family_has_the_same_hard_bound_as_jax(ours, theirs, variance):
    shape = (300, 200)  # fan_in 300, fan_out 200
    a, b = np.asarray(ours(KEY, shape)), np.asarray(theirs(KEY, shape))
    bound = 2 * math.sqrt(variance) / 0.87962566103423978  # 2 sigma of the corrected normal
    assert np.abs(a).max() <= bound * (1 + 1e-6) and np.abs(b).max() <= bound * (1 + 1e-6)
    assert np.abs(a).max() > 0.99 * bound and np.abs(b).max() > 0.99 * bound


def test_truncated_normal_bounds_are_in_stddev_units_without_correction():
    w = np.asarray(xf.truncated_normal(0.02)(KEY, (200, 150)))
    assert np.abs(w).max() <= 0.04 * (1 + 1e-6)
    assert abs(w.std() / (0.02 * 0.8796) - 1) < 0.03


@pytest.mark.parametrize("shape", [(3, 16, 32), (4, 4, 16, 32), (3, 2, 3, 8, 8)], ids=["3d", "4d", "5d"])
def test_delta_orthogonal_has_an_orthogonal_centre_and_zeros_elsewhere(shape):
    w = np.asarray(xf.delta_orthogonal(scale=2.0)(KEY, shape))
    ref = np.asarray(jinit.delta_orthogonal(scale=2.0)(KEY, shape))
    centre = tuple((k - 1) // 2 for k in shape[:-2])
    m = w[centre]
    assert np.allclose(m @ m.T, 4 * np.eye(shape[-2]), atol=1e-5)
    assert np.count_nonzero(w) == np.count_nonzero(m) == np.count_nonzero(ref)
    assert np.array_equal(w != 0, ref != 0)  # the same centre as jax, (k - 1) // 2


def test_delta_orthogonal_centre_is_distributed_as_jax():
    shape = (3, 3, 128, 160)  # 20480 centre values
    a = np.asarray(xf.delta_orthogonal()(jax.random.key(1), shape))[1, 1]
    b = np.asarray(jinit.delta_orthogonal()(jax.random.key(2), shape))[1, 1]
    assert ks(a, b) > P_MIN


@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 4, 8)], ids=["square", "wide"])
@pytest.mark.parametrize("column_axis", [-1, -2], ids=["last", "second-last"])
def test_delta_orthogonal_column_axis_as_jax(column_axis, shape):
    ours = np.asarray(xf.delta_orthogonal(column_axis=column_axis)(KEY, shape))[1]
    theirs = np.asarray(jinit.delta_orthogonal(column_axis=column_axis)(KEY, shape))[1]
    for m in (ours, theirs):  # (in, out) with in <= out: orthonormal rows either way
        assert np.allclose(m @ m.T, np.eye(shape[1]), atol=1e-5)


# ------------------------------------------------------------ jit, eval_shape, sharding


@pytest.mark.parametrize("name", FACTORIES)
def test_works_inside_jit_and_under_eval_shape(name):
    init, shape = FACTORIES[name](), shape_of(name)
    jitted = jax.jit(lambda k: init(k, shape, jnp.bfloat16))(KEY)
    assert jitted.shape == shape and jitted.dtype == jnp.bfloat16
    abstract = jax.eval_shape(lambda k: init(k, shape, jnp.float32), KEY)
    assert abstract.shape == shape and abstract.dtype == np.float32


@pytest.mark.parametrize("shape", [(37, 53), (3, 3, 16, 32)], ids=["dense", "conv2d"])
def test_random_bits_inside_jit_are_the_eager_bits(shape):
    # U[0, 1) is the random mantissa bits themselves: equal floats <=> equal bits.
    init = xf.uniform(0.0, 1.0)
    eager = np.asarray(init(KEY, shape))
    assert np.array_equal(np.asarray(jax.jit(lambda k: init(k, shape))(KEY)), eager)


SHARDED = {
    "kaiming_uniform": (xf.kaiming_uniform(), (8, 8)),
    "delta_orthogonal": (xf.delta_orthogonal(), (3, 8, 8)),
    "torch_embedding-padded": (xf.torch_embedding(padding_idx=0), (8, 8)),
}


@pytest.mark.parametrize("case", SHARDED)
def test_out_sharding_places_the_result(case):
    init, shape = SHARDED[case]
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Explicit,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "model"))
    out = init(KEY, shape, jnp.float32, sharding)
    assert out.sharding.spec[-1] == "model"
    assert np.array_equal(out, init(KEY, shape, jnp.float32))


def test_out_sharding_as_partition_spec_under_a_mesh():
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Explicit,))
    with jax.set_mesh(mesh):
        out = xf.normal()(KEY, (8, 8), None, jax.sharding.PartitionSpec("model"))
        assert out.sharding.spec[0] == "model"
    with pytest.raises(TypeError, match="out_sharding"):
        xf.normal()(KEY, (8, 8), None, "model")


def test_linen_with_partitioning_metadata():
    dense = nn.Dense(64, kernel_init=nn.with_partitioning(xf.kaiming_uniform(), (None, "model")),
                     bias_init=nn.with_partitioning(xf.torch_linear_bias(32), ("model",)))
    variables = jax.jit(dense.init)(KEY, jnp.zeros((1, 32)))
    kernel = variables["params"]["kernel"]
    assert isinstance(kernel, nn.Partitioned) and kernel.names == (None, "model")
    specs = nn.get_partition_spec(variables)["params"]
    assert specs["kernel"] == jax.sharding.PartitionSpec(None, "model")
    assert specs["bias"] == jax.sharding.PartitionSpec("model")
    assert float(jnp.abs(kernel.value).max()) <= math.sqrt(6 / 32)


def test_nnx_with_partitioning_metadata():
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    init = nnx.with_partitioning(xf.kaiming_uniform(), (None, "model"), mesh=mesh)
    layer = nnx.Linear(32, 64, kernel_init=init, rngs=nnx.Rngs(0))
    assert layer.kernel.get_metadata()["out_sharding"] == (None, "model")
    assert layer.kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "model")
    assert float(jnp.abs(layer.kernel[...]).max()) <= math.sqrt(6 / 32)


def test_linen_abstract_init_under_eval_shape():
    model = nn.Conv(32, (3, 3), kernel_init=xf.orthogonal(), bias_init=xf.torch_conv_bias(144))
    abstract = jax.eval_shape(model.init, KEY, jnp.zeros((1, 8, 8, 16)))
    assert abstract["params"]["kernel"].shape == (3, 3, 16, 32)
    assert abstract["params"]["bias"].shape == (32,)


# ------------------------------------------------------------ models


class LinenNet(nn.Module):
    """Conv -> Dense -> Dense with an embedding, every parameter from xinit."""

    @nn.compact
    def __call__(self, images, tokens):
        x = nn.Conv(32, (3, 3), kernel_init=xf.kaiming_normal(nonlinearity="relu"),
                    bias_init=xf.zeros())(images)
        x = nn.relu(x).mean(axis=(1, 2))
        e = nn.Embed(1000, 32, embedding_init=xf.normal(0.0, 0.02, layout=xf.IDENTITY))(tokens)
        x = x + e.mean(axis=1)
        x = nn.Dense(400, kernel_init=xf.xavier_uniform(), bias_init=xf.constant(0.1))(x)
        x = nn.tanh(x)
        return nn.Dense(10, kernel_init=xf.lecun_normal(), bias_init=xf.zeros())(x)


def _check_model_stats(conv_k, conv_b, table, d1_k, d1_b, d2_k, out, batch):
    assert conv_k.shape == (3, 3, 16, 32) and np.all(conv_b == 0)
    assert abs(conv_k.std() / math.sqrt(2 / 144) - 1) < 0.1  # kaiming relu, fan_in 3*3*16
    assert abs(table.std() / 0.02 - 1) < 0.03
    assert d1_k.shape == (32, 400) and np.all(d1_b == np.float32(0.1))
    assert np.abs(d1_k).max() <= math.sqrt(6 / 432)  # xavier, fans 32 + 400
    assert abs(d2_k.std() / math.sqrt(1 / 400) - 1) < 0.1  # lecun, fan_in 400
    assert out.shape == (batch, 10) and np.isfinite(out).all()


def test_linen_model_initializes_runs_and_has_the_expected_statistics():
    model = LinenNet()
    images, tokens = jnp.ones((4, 8, 8, 16)), jnp.arange(12).reshape(4, 3)
    params = jax.jit(model.init)(KEY, images, tokens)["params"]
    out = np.asarray(jax.jit(model.apply)({"params": params}, images, tokens))
    p = jax.tree.map(np.asarray, params)
    _check_model_stats(p["Conv_0"]["kernel"], p["Conv_0"]["bias"], p["Embed_0"]["embedding"],
                       p["Dense_0"]["kernel"], p["Dense_0"]["bias"], p["Dense_1"]["kernel"], out, 4)


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(16, 32, (3, 3), kernel_init=xf.kaiming_normal(nonlinearity="relu"),
                             bias_init=xf.zeros(), rngs=rngs)
        self.embed = nnx.Embed(1000, 32, embedding_init=xf.normal(0.0, 0.02, layout=xf.IDENTITY),
                               rngs=rngs)
        self.d1 = nnx.Linear(32, 400, kernel_init=xf.xavier_uniform(),
                             bias_init=xf.constant(0.1), rngs=rngs)
        self.d2 = nnx.Linear(400, 10, kernel_init=xf.lecun_normal(), bias_init=xf.zeros(),
                             rngs=rngs)

    def __call__(self, images, tokens):
        x = nnx.relu(self.conv(images)).mean(axis=(1, 2)) + self.embed(tokens).mean(axis=1)
        return self.d2(nnx.tanh(self.d1(x)))


def test_nnx_model_initializes_runs_and_has_the_expected_statistics():
    model = NnxNet(nnx.Rngs(params=0))
    images, tokens = jnp.ones((4, 8, 8, 16)), jnp.arange(12).reshape(4, 3)
    out = np.asarray(nnx.jit(lambda m, x, t: m(x, t))(model, images, tokens))
    v = lambda p: np.asarray(p[...])  # noqa: E731
    _check_model_stats(v(model.conv.kernel), v(model.conv.bias), v(model.embed.embedding),
                       v(model.d1.kernel), v(model.d1.bias), v(model.d2.kernel), out, 4)


def test_nnx_model_under_nnx_eval_shape():
    abstract = nnx.eval_shape(lambda: NnxNet(nnx.Rngs(0)))
    assert abstract.d1.kernel.shape == (32, 400)


# Dense's own forward pass during init casts float64 to float32 when x64 is off (and warns).
@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_param_dtype_reaches_the_initializer(dtype):
    layer = nn.Dense(8, kernel_init=xf.orthogonal(), bias_init=xf.zeros(), param_dtype=dtype)
    kernel = layer.init(KEY, jnp.zeros((1, 8)))["params"]["kernel"]
    assert kernel.dtype == np.dtype(dtype)
    q = np.asarray(kernel, np.float64)
    tol = {2: 2e-2, 4: 1e-5, 8: 1e-12}[np.dtype(dtype).itemsize]
    assert np.allclose(q.T @ q, np.eye(8), atol=tol)
