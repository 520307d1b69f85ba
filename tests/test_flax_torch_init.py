"""xinit.flax.torch_init on its own: torch's semantics as Flax initializers.

The Initializer contract, layouts and fans, validation at construction, jit,
eval_shape and out_sharding on one device, Flax integration (linen, nnx,
partitioning, param dtypes). Bit identity with xinit.torch and statistics
against torch.nn.init live in test_cross_framework.py.
"""

from __future__ import annotations

import inspect
import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from xinit.core import TORCH, Layout
from xinit.core.errors import BoundsError, ModeError, ZeroSizeError
from xinit.flax import torch_init as ti

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")

jinit = jax.nn.initializers
P_MIN = 1e-4
KEY = jax.random.key(0)

# (id, factory) for every public initializer factory, with default-ish arguments.
FACTORIES = {
    "uniform": lambda: ti.uniform(-0.5, 0.5),
    "normal": lambda: ti.normal(0.0, 0.02),
    "trunc_normal": lambda: ti.trunc_normal(0.0, 1.0, -2.0, 2.0),
    "constant": lambda: ti.constant(0.25),
    "ones": ti.ones,
    "zeros": ti.zeros,
    "eye": ti.eye,
    "dirac": ti.dirac,
    "xavier_uniform": ti.xavier_uniform,
    "xavier_normal": ti.xavier_normal,
    "kaiming_uniform": ti.kaiming_uniform,
    "kaiming_normal": ti.kaiming_normal,
    "orthogonal": ti.orthogonal,
    "sparse": lambda: ti.sparse(0.5),
    "linear_kernel": ti.linear_kernel,
    "linear_bias": lambda: ti.linear_bias(16),
    "conv_kernel": ti.conv_kernel,
    "conv_bias": lambda: ti.conv_bias(16),
    "conv_transpose_kernel": ti.conv_transpose_kernel,
    "conv_transpose_bias": lambda: ti.conv_transpose_bias(16),
    "embedding": ti.embedding,
}
# A shape each factory accepts.
SHAPE_FOR = {"eye": (6, 4), "sparse": (6, 4), "dirac": (3, 3, 4, 8), "linear_bias": (7,),
             "conv_bias": (7,), "conv_transpose_bias": (7,)}
DTYPES = {"f16": jnp.float16, "bf16": jnp.bfloat16, "f32": jnp.float32, "f64": jnp.float64}


def shape_of(name):
    return SHAPE_FOR.get(name, (3, 3, 4, 8))


def ks(a, b):
    return stats.ks_2samp(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()).pvalue


# ------------------------------------------------------------ the contract


def test_every_public_factory_is_in_the_table():
    public = {n for n in ti.__all__ if callable(getattr(ti, n)) and n[0].islower()}
    assert public == set(FACTORIES) == set(ti.DROP_INS + ti.LAYER_DEFAULTS)


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
    out = ti.kaiming_normal()(KEY, (64, 32), jnp.float64)
    assert out.dtype == np.float64 and not jax.config.jax_enable_x64
    # jax itself truncates to float32 here (with a warning)
    with pytest.warns(UserWarning, match="truncated to dtype float32"):
        assert jinit.he_normal()(KEY, (64, 32), jnp.float64).dtype == np.float32


def test_dtype_none_is_jax_default_float_and_the_factory_dtype_is_the_default():
    assert ti.normal()(KEY, (4,)).dtype == np.float32
    with jax.enable_x64(True):  # a local scope; as jax.nn.initializers, None follows x64
        assert ti.normal()(KEY, (4,)).dtype == jinit.normal()(KEY, (4,)).dtype == np.float64
    init = ti.normal(dtype=jnp.bfloat16)
    assert init(KEY, (4,)).dtype == jnp.bfloat16
    assert init(KEY, (4,), jnp.float32).dtype == np.float32


@pytest.mark.parametrize("name", ["constant", "ones", "zeros", "eye"])
def test_deterministic_fills_take_integer_dtypes(name):
    shape = SHAPE_FOR.get(name, (3, 4))
    out = FACTORIES[name]()(KEY, shape, jnp.int32)
    assert out.dtype == np.int32


def test_initializers_are_hashable_comparable_and_picklable():
    a, b = ti.kaiming_uniform(a=1.0), ti.kaiming_uniform(a=1.0)
    assert a == b and hash(a) == hash(b) and a != ti.kaiming_uniform(a=2.0)
    assert ti.normal() != ti.normal(layout=TORCH)
    restored = pickle.loads(pickle.dumps(a))
    assert np.array_equal(restored(KEY, (5, 6)), a(KEY, (5, 6)))
    assert repr(a).startswith("xinit.flax.torch_init.kaiming_uniform(") and "layout=FLAX" in repr(a)


# ------------------------------------------------------------ layouts and fans


@pytest.mark.parametrize(
    "mode, fan", [("fan_in", 100), ("fan_out", 400)], ids=["fan_in", "fan_out"]
)
def test_dense_kernel_fans_follow_the_flax_layout(mode, fan):
    w = np.asarray(ti.kaiming_uniform(mode=mode)(KEY, (100, 400)))  # Dense(in=100, out=400)
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
    w = np.asarray(ti.kaiming_normal(layout=layout)(KEY, shape))
    receptive = math.prod(shape) // 40_000
    assert abs(w.std() / math.sqrt(2 / (100 * receptive)) - 1) < 0.03


def test_conv_kernel_fans_are_receptive_times_channels():
    w = np.asarray(ti.xavier_uniform()(KEY, (3, 3, 16, 32)))  # Conv(16 -> 32, 3x3)
    bound = math.sqrt(6 / (9 * 16 + 9 * 32))
    assert bound * 0.99 < np.abs(w).max() <= bound


def test_vectors_use_the_identity_layout():
    assert np.array_equal(ti.normal()(KEY, (50,)), ti.normal(layout=TORCH)(KEY, (50,)))


def test_the_layout_changes_only_which_element_gets_which_value():
    a = ti.normal()(KEY, (3, 3, 8, 16))
    b = ti.normal(layout=TORCH)(KEY, (16, 8, 3, 3))
    assert np.array_equal(a, b.transpose(2, 3, 1, 0))


# ------------------------------------------------------------ validation


BAD_ARGS = {
    "uniform-a>b": (lambda: ti.uniform(1.0, 0.0), BoundsError),
    "normal-negative-std": (lambda: ti.normal(std=-1.0), BoundsError),
    "trunc_normal-zero-std": (lambda: ti.trunc_normal(std=0.0), ZeroSizeError),
    "trunc_normal-a>b": (lambda: ti.trunc_normal(a=1.0, b=-1.0), BoundsError),
    "dirac-groups-0": (lambda: ti.dirac(0), ZeroSizeError),
    "xavier-negative-gain": (lambda: ti.xavier_uniform(-1.0), BoundsError),
    "kaiming-bad-mode": (lambda: ti.kaiming_uniform(mode="fan_avg"), ModeError),
    "kaiming-bad-nonlinearity": (lambda: ti.kaiming_normal(nonlinearity="gelu"), ValueError),
    "kaiming-mode-not-str": (lambda: ti.kaiming_normal(mode=None), TypeError),
    "orthogonal-gain-str": (lambda: ti.orthogonal("x"), TypeError),
    "sparse-negative-std": (lambda: ti.sparse(0.1, -1.0), BoundsError),
    "layout-not-a-layout": (lambda: ti.normal(layout="flax"), TypeError),
    "dtype-not-a-dtype": (lambda: ti.normal(dtype="nope"), TypeError),
    "torch_bias-negative-fan": (lambda: ti.linear_bias(-1), ValueError),
    "torch_bias-fractional-fan": (lambda: ti.conv_bias(2.5), ValueError),
    "torch_embedding-padding-str": (lambda: ti.embedding(padding_idx="0"), TypeError),
}


@pytest.mark.parametrize("case", BAD_ARGS)
def test_bad_arguments_raise_at_construction(case):
    build, error = BAD_ARGS[case]
    with pytest.raises(error):
        build()


BAD_SHAPES = {
    "kaiming-1d": (ti.kaiming_uniform, (10,)),
    "xavier-0d": (ti.xavier_normal, ()),
    "eye-3d": (ti.eye, (2, 2, 2)),
    "dirac-2d": (ti.dirac, (4, 4)),
    "sparse-3d": (lambda: ti.sparse(0.1), (2, 2, 2)),
    "orthogonal-1d": (ti.orthogonal, (4,)),
    "torch_embedding-padding-out-of-range": (lambda: ti.embedding(padding_idx=10), (10, 4)),
}


@pytest.mark.parametrize("case", BAD_SHAPES)
def test_unsuitable_shapes_raise_value_error_with_the_call_in_the_message(case):
    factory, shape = BAD_SHAPES[case]
    with pytest.raises(ValueError) as info:
        factory()(KEY, shape)
    assert str(tuple(shape)) in str(info.value)


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
    init = ti.uniform(0.0, 1.0)
    eager = np.asarray(init(KEY, shape))
    assert np.array_equal(np.asarray(jax.jit(lambda k: init(k, shape))(KEY)), eager)


SHARDED = {
    "kaiming_uniform": (ti.kaiming_uniform(), (8, 8)),
    "torch_embedding-padded": (ti.embedding(padding_idx=0), (8, 8)),
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
        out = ti.normal()(KEY, (8, 8), None, jax.sharding.PartitionSpec("model"))
        assert out.sharding.spec[0] == "model"
    with pytest.raises(TypeError, match="out_sharding"):
        ti.normal()(KEY, (8, 8), None, "model")


def test_linen_with_partitioning_metadata():
    dense = nn.Dense(64, kernel_init=nn.with_partitioning(ti.kaiming_uniform(), (None, "model")),
                     bias_init=nn.with_partitioning(ti.linear_bias(32), ("model",)))
    variables = jax.jit(dense.init)(KEY, jnp.zeros((1, 32)))
    kernel = variables["params"]["kernel"]
    assert isinstance(kernel, nn.Partitioned) and kernel.names == (None, "model")
    specs = nn.get_partition_spec(variables)["params"]
    assert specs["kernel"] == jax.sharding.PartitionSpec(None, "model")
    assert specs["bias"] == jax.sharding.PartitionSpec("model")
    assert float(jnp.abs(kernel.value).max()) <= math.sqrt(6 / 32)


def test_nnx_with_partitioning_metadata():
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    init = nnx.with_partitioning(ti.kaiming_uniform(), (None, "model"), mesh=mesh)
    layer = nnx.Linear(32, 64, kernel_init=init, rngs=nnx.Rngs(0))
    assert layer.kernel.get_metadata()["out_sharding"] == (None, "model")
    assert layer.kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "model")
    assert float(jnp.abs(layer.kernel[...]).max()) <= math.sqrt(6 / 32)


def test_linen_abstract_init_under_eval_shape():
    model = nn.Conv(32, (3, 3), kernel_init=ti.orthogonal(), bias_init=ti.conv_bias(144))
    abstract = jax.eval_shape(model.init, KEY, jnp.zeros((1, 8, 8, 16)))
    assert abstract["params"]["kernel"].shape == (3, 3, 16, 32)
    assert abstract["params"]["bias"].shape == (32,)


# ------------------------------------------------------------ models
# (linen and nnx models built with torch_init: tests/test_flax_adapter.py, next to the
# same models built with JAX's names)


# Dense's own forward pass during init casts float64 to float32 when x64 is off (and warns).
@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_param_dtype_reaches_the_initializer(dtype):
    layer = nn.Dense(8, kernel_init=ti.orthogonal(), bias_init=ti.zeros(), param_dtype=dtype)
    kernel = layer.init(KEY, jnp.zeros((1, 8)))["params"]["kernel"]
    assert kernel.dtype == np.dtype(dtype)
    q = np.asarray(kernel, np.float64)
    tol = {2: 2e-2, 4: 1e-5, 8: 1e-12}[np.dtype(dtype).itemsize]
    assert np.allclose(q.T @ q, np.eye(8), atol=tol)
