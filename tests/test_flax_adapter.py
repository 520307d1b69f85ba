"""xinit.flax's top level as a drop-in for jax.nn.initializers.

Every name jax.nn.initializers exports is here with JAX's signature, semantics,
dtypes and exception types; the reference (JAX itself) runs in the same test.
Statistical tests use fixed keys (deterministic outcomes) and >= 20k values per
side with a KS threshold of p > 1e-4, so agreeing distributions pass with a wide
margin while a wrong scale, fan, bound or truncation fails. torch's semantics
(xinit.flax.torch_init) are tested in test_flax_torch_init.py, sharding on
several devices in test_flax_sharding.py, complex numbers in test_complex.py.
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
from xinit.core.errors import BoundsError, ModeError

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")

jinit = jax.nn.initializers
P_MIN = 1e-4
KEY = jax.random.key(0)

# Factories with JAX's own arguments (each side built by the same call).
FACTORIES = {
    "constant": lambda m: m.constant(0.25),
    "uniform": lambda m: m.uniform(0.5),
    "normal": lambda m: m.normal(0.3),
    "truncated_normal": lambda m: m.truncated_normal(0.3),
    "variance_scaling": lambda m: m.variance_scaling(1.0, "fan_avg", "uniform"),
    "lecun_normal": lambda m: m.lecun_normal(),
    "lecun_uniform": lambda m: m.lecun_uniform(),
    "glorot_normal": lambda m: m.glorot_normal(),
    "glorot_uniform": lambda m: m.glorot_uniform(),
    "he_normal": lambda m: m.he_normal(),
    "he_uniform": lambda m: m.he_uniform(),
    "xavier_normal": lambda m: m.xavier_normal(),
    "xavier_uniform": lambda m: m.xavier_uniform(),
    "kaiming_normal": lambda m: m.kaiming_normal(),
    "kaiming_uniform": lambda m: m.kaiming_uniform(),
    "orthogonal": lambda m: m.orthogonal(),
    "delta_orthogonal": lambda m: m.delta_orthogonal(),
    "zeros": lambda m: m.zeros,
    "ones": lambda m: m.ones,
}
SHAPE_FOR = {"delta_orthogonal": (3, 3, 4, 8)}


def shape_of(name):
    return SHAPE_FOR.get(name, (3, 3, 4, 8))


def ks(a, b):
    return stats.ks_2samp(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()).pvalue


# ------------------------------------------------------------ the names and signatures


def test_every_name_of_jax_nn_initializers_is_here():
    theirs = {n for n in dir(jinit) if not n.startswith("_")}
    assert theirs == set(xf.JAX_NAMES)
    assert set(xf.JAX_NAMES) <= set(xf.__all__)
    assert xf.Initializer is jinit.Initializer
    assert set(FACTORIES) == set(xf.JAX_NAMES) - {"Initializer"}


def test_aliases_are_plain_assignments_as_in_jax():
    assert xf.xavier_uniform is xf.glorot_uniform and xf.xavier_normal is xf.glorot_normal
    assert xf.kaiming_uniform is xf.he_uniform and xf.kaiming_normal is xf.he_normal
    assert jinit.kaiming_normal is jinit.he_normal  # the reference does the same
    assert xf.zeros_init() is xf.zeros and xf.ones_init() is xf.ones


def _params(fn):
    return [(p.name, p.default, p.kind) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", sorted(set(FACTORIES) - {"zeros", "ones"}))
def test_factory_signatures_are_jaxs(name):
    assert _params(getattr(xf, name)) == _params(getattr(jinit, name))


@pytest.mark.parametrize("name", FACTORIES)
def test_every_initializer_has_the_initializer_call_signature(name):
    init = FACTORIES[name](xf)
    assert isinstance(init, jinit.Initializer)
    theirs = _params(jinit.Initializer.__call__)[1:]  # drop self
    assert _params(init) == theirs
    if name in ("zeros", "ones"):  # initializers themselves, as jax's
        assert _params(init) == _params(getattr(jinit, name))


def test_flax_linen_initializers_names_are_here_too():
    fli = pytest.importorskip("flax.linen.initializers")
    names = {n for n in dir(fli) if not n.startswith("_") and n not in ("Initializer",)}
    names = {n for n in names if callable(getattr(fli, n)) and getattr(fli, n).__module__ != "typing"}
    assert names <= set(xf.__all__), names - set(xf.__all__)


# ------------------------------------------------------------ semantics, against jax


@pytest.mark.parametrize("name", FACTORIES)
def test_shape_and_dtype_as_jax(name):
    shape = shape_of(name)
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16, None):
        ours = FACTORIES[name](xf)(KEY, shape, dtype)
        if name not in ("orthogonal", "delta_orthogonal") or dtype in (jnp.float32, None):
            theirs = FACTORIES[name](jinit)(KEY, shape, dtype)  # jax's QR lacks 16-bit floats
            assert ours.dtype == theirs.dtype
        assert ours.shape == shape and ours.dtype == np.dtype(dtype or jnp.float32)
        assert bool(jnp.isfinite(ours.astype(jnp.float32)).all())


def test_uniform_is_zero_to_scale_and_normal_takes_stddev():
    u = np.asarray(xf.uniform(0.5)(KEY, (40_000,)))
    assert u.min() >= 0 and u.max() < 0.5 and ks(u, jinit.uniform(0.5)(KEY, (40_000,))) > P_MIN
    neg = np.asarray(xf.uniform(-2.0)(KEY, (40_000,)))  # jax: uniform(key) * scale
    assert ks(neg, jinit.uniform(-2.0)(KEY, (40_000,))) > P_MIN
    n = np.asarray(xf.normal(0.3)(KEY, (40_000,)))
    assert abs(n.std() / 0.3 - 1) < 0.03 and abs(n.mean()) < 0.01
    assert ks(xf.normal(-0.3)(KEY, (40_000,)), jinit.normal(-0.3)(KEY, (40_000,))) > P_MIN


def test_zeros_ones_and_constant_fill_any_dtype_as_jax():
    for dtype in (jnp.int32, jnp.int8, jnp.uint8, jnp.bool_, jnp.float16, jnp.complex64):
        for name in ("zeros", "ones"):
            ours, theirs = getattr(xf, name)(KEY, (2, 3), dtype), getattr(jinit, name)(KEY, (2, 3), dtype)
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
        ours, theirs = xf.constant(1)(KEY, (2, 3), dtype), jinit.constant(1)(KEY, (2, 3), dtype)
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    # jnp.full's casts: 0.7 -> 0 in int32, -7 stays -7, a complex value in a complex dtype
    for value, dtype in ((0.7, jnp.int32), (-7, jnp.float32), (1 + 2j, jnp.complex64), (True, jnp.int8)):
        ours, theirs = xf.constant(value)(KEY, (4,), dtype), jinit.constant(value)(KEY, (4,), dtype)
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    assert xf.constant(jnp.array(3.5))(KEY, (2,)).tolist() == [3.5, 3.5]  # a 0-d array value


def test_fills_ignore_the_key_as_jax():
    keys = jax.random.split(KEY, 3)
    assert xf.zeros(keys, (2, 2)).shape == jinit.zeros(keys, (2, 2)).shape == (2, 2)
    assert np.array_equal(xf.constant(2.0)(None, (3,)), jinit.constant(2.0)(None, (3,)))
    jitted = jax.jit(lambda k: xf.zeros(k, (64, 64)))(KEY)  # traced with the user's program
    assert np.array_equal(jitted, np.zeros((64, 64)))


def test_dtype_none_is_the_factory_dtype_then_jaxs_default_float():
    assert xf.normal()(KEY, (4,)).dtype == np.float32
    with jax.enable_x64(True):  # a local scope: None follows x64, as jax
        assert xf.normal()(KEY, (4,)).dtype == jinit.normal()(KEY, (4,)).dtype == np.float64
        assert xf.zeros(KEY, (4,)).dtype == np.float64
    init = xf.normal(dtype=jnp.bfloat16)
    assert init(KEY, (4,)).dtype == jnp.bfloat16 and init(KEY, (4,), jnp.float32).dtype == np.float32
    assert xf.lecun_normal(dtype=jnp.float16)(KEY, (4, 4)).dtype == np.float16


@pytest.mark.parametrize("name", ["uniform", "lecun_normal", "zeros"])
def test_float64_without_x64_is_float32_with_jaxs_warning(name):
    assert not jax.config.jax_enable_x64
    with pytest.warns(UserWarning, match="Explicitly requested dtype float64") as ours:
        out = FACTORIES[name](xf)(KEY, (8, 4), jnp.float64)
    with pytest.warns(UserWarning, match="Explicitly requested dtype float64"):
        ref = FACTORIES[name](jinit)(KEY, (8, 4), jnp.float64)
    assert out.dtype == ref.dtype == np.float32
    assert "jax_enable_x64" in str(ours[0].message) and not jax.config.jax_enable_x64


def test_scale_may_be_a_jax_array_and_the_dtype_wins():
    scale = jnp.array(1.0, dtype=jnp.float32)
    for factory in (xf.uniform, xf.normal, xf.truncated_normal):
        assert factory(scale, jnp.bfloat16)(KEY, (4, 4)).dtype == jnp.bfloat16


# Same distribution as jax's, by KS on >= 20k values.
NATIVE = [
    ("lecun_normal-dense", lambda m: m.lecun_normal(), (200, 150)),
    ("lecun_uniform-conv", lambda m: m.lecun_uniform(), (3, 3, 64, 48)),
    ("glorot_normal-conv", lambda m: m.glorot_normal(), (3, 3, 64, 48)),
    ("glorot_uniform-dense", lambda m: m.glorot_uniform(), (300, 100)),
    ("he_normal-conv1d", lambda m: m.he_normal(), (5, 64, 96)),
    ("he_uniform-conv3d", lambda m: m.he_uniform(), (3, 3, 3, 32, 32)),
    ("kaiming_normal-is-truncated", lambda m: m.kaiming_normal(), (3, 3, 64, 48)),
    ("vs-fan_geo_avg-normal", lambda m: m.variance_scaling(2.0, "fan_geo_avg", "normal"), (100, 400)),
    ("vs-fan_out-truncated", lambda m: m.variance_scaling(0.5, "fan_out", "truncated_normal"),
     (400, 100)),
    ("vs-torch-axes", lambda m: m.variance_scaling(1.0, "fan_in", "uniform", in_axis=1, out_axis=0),
     (64, 16, 5, 5)),
    ("vs-axis-groups", lambda m: m.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1),
                                                    out_axis=-1), (4, 5, 2000)),
    ("vs-batch-axis", lambda m: m.variance_scaling(1.0, "fan_avg", "truncated_normal", batch_axis=0),
     (16, 30, 50)),
    ("vs-fractional-fans", lambda m: m.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1),
                                                        batch_axis=1), (40, 500)),
    ("vs-1d-explicit-axes", lambda m: m.variance_scaling(1.0, "fan_in", "normal", in_axis=[0],
                                                         out_axis=[]), (40_000,)),
    ("embed-default", lambda m: m.variance_scaling(1.0, "fan_in", "normal", out_axis=0), (1000, 64)),
    ("truncated_normal-default", lambda m: m.truncated_normal(), (200, 150)),
    ("truncated_normal-asym", lambda m: m.truncated_normal(0.5, lower=-1.0, upper=3.0), (200, 150)),
    ("truncated_normal-negative-stddev", lambda m: m.truncated_normal(-0.5, lower=-1.0, upper=3.0),
     (200, 150)),
    ("orthogonal-conv", lambda m: m.orthogonal(2.0), (3, 3, 64, 48)),
    ("orthogonal-column_axis-0", lambda m: m.orthogonal(column_axis=0), (48, 3, 3, 64)),
]


@pytest.mark.parametrize("make, shape", [c[1:] for c in NATIVE], ids=[c[0] for c in NATIVE])
def test_distributed_as_jax(make, shape):
    a = np.asarray(make(xf)(jax.random.key(1), shape), np.float64)
    b = np.asarray(make(jinit)(jax.random.key(2), shape), np.float64)
    assert a.size >= 20_000
    assert ks(a, b) > P_MIN
    assert abs(a.std() / b.std() - 1) < 0.03


@pytest.mark.parametrize(
    "name, variance", [("glorot_normal", 1 / 250), ("he_normal", 2 / 300)],
)
def test_truncated_family_has_the_same_hard_bound_as_jax(name, variance):
    shape = (300, 200)  # fan_in 300, fan_out 200
    a, b = np.asarray(getattr(xf, name)()(KEY, shape)), np.asarray(getattr(jinit, name)()(KEY, shape))
    bound = 2 * math.sqrt(variance) / 0.87962566103423978  # 2 sigma of the corrected normal
    assert np.abs(a).max() <= bound * (1 + 1e-6) and np.abs(b).max() <= bound * (1 + 1e-6)
    assert np.abs(a).max() > 0.99 * bound and np.abs(b).max() > 0.99 * bound


@pytest.mark.parametrize("column_axis", [-1, -2, 0, 1, 2])
@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (2, 3, 4), (4, 4)], ids=str)
def test_orthogonal_is_orthonormal_along_jaxs_axes(shape, column_axis):
    if not -len(shape) <= column_axis < len(shape):
        with pytest.raises(IndexError):
            jinit.orthogonal(column_axis=column_axis)(KEY, shape)
        with pytest.raises(IndexError):
            xf.orthogonal(column_axis=column_axis)(KEY, shape)
        return
    for q in (xf.orthogonal(column_axis=column_axis)(KEY, shape),
              jinit.orthogonal(column_axis=column_axis)(KEY, shape)):
        m = np.moveaxis(np.asarray(q, np.float64), column_axis, -1).reshape(-1, shape[column_axis])
        small = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
        assert np.allclose(small, np.eye(len(small)), atol=1e-5)


@pytest.mark.parametrize("rows, cols", [(0, 3), (3, 0), (0, 0), (1, 3), (3, 1), (2, 2)])
def test_orthogonal_zero_and_small_sizes(rows, cols):
    val = np.asarray(xf.orthogonal()(KEY, (rows, cols)), np.float64)
    assert val.shape == (rows, cols)
    if 0 < rows <= cols:
        assert np.allclose(val @ val.T, np.eye(rows), atol=1e-6)
    if 0 < cols <= rows:
        assert np.allclose(val.T @ val, np.eye(cols), atol=1e-6)


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


# ------------------------------------------------------------ bad calls: jax's exception types


def _raises_like_jax(call):
    """``call(module)`` raises the same builtin exception class for jax and for xinit."""
    with pytest.raises(Exception) as theirs:
        call(jinit)
    with pytest.raises(type(theirs.value)) as ours:
        call(xf)
    return theirs.value, ours.value


BAD_CALLS = {
    "uniform-int32": lambda m: m.uniform()(KEY, (3, 4), jnp.int32),
    "uniform-bool": lambda m: m.uniform()(KEY, (3, 4), jnp.bool_),
    "uniform-complex": lambda m: m.uniform()(KEY, (3, 4), jnp.complex64),
    "normal-int32": lambda m: m.normal()(KEY, (3, 4), jnp.int32),
    "truncated_normal-complex": lambda m: m.truncated_normal()(KEY, (3, 4), jnp.complex64),
    "lecun_normal-int32": lambda m: m.lecun_normal()(KEY, (3, 4), jnp.int32),
    "glorot_uniform-bool": lambda m: m.glorot_uniform()(KEY, (3, 4), jnp.bool_),
    "orthogonal-int32": lambda m: m.orthogonal()(KEY, (3, 4), jnp.int32),
    "delta_orthogonal-int32": lambda m: m.delta_orthogonal()(KEY, (3, 3, 4), jnp.int32),
    "uniform-batch-of-keys": lambda m: m.uniform()(jax.random.split(KEY, 3), (3, 4)),
    "lecun_normal-batch-of-keys": lambda m: m.lecun_normal()(jax.random.split(KEY, 3), (3, 4)),
    "orthogonal-batch-of-raw-keys": lambda m: m.orthogonal()(
        jax.random.split(jax.random.PRNGKey(0), 3), (3, 4)),
    "normal-none-key": lambda m: m.normal()(None, (3, 4)),
    "lecun_normal-1d": lambda m: m.lecun_normal()(KEY, (5,)),
    "lecun_normal-0d": lambda m: m.lecun_normal()(KEY, ()),
    "lecun_normal-int-shape": lambda m: m.lecun_normal()(KEY, 5),
    "lecun_normal-zero-size": lambda m: m.lecun_normal()(KEY, (0, 4)),
    "glorot_normal-zero-out": lambda m: m.glorot_normal()(KEY, (4, 0)),
    "vs-in-axis-out-of-range": lambda m: m.variance_scaling(1.0, "fan_in", "normal",
                                                            in_axis=5)(KEY, (3, 4)),
    "vs-bad-mode": lambda m: m.variance_scaling(1.0, "fan_sum", "normal")(KEY, (3, 4)),
    "vs-bad-distribution": lambda m: m.variance_scaling(1.0, "fan_in", "cauchy")(KEY, (3, 4)),
    "orthogonal-1d": lambda m: m.orthogonal()(KEY, (4,)),
    "orthogonal-column-axis-out-of-range": lambda m: m.orthogonal(column_axis=5)(KEY, (4, 4)),
    "orthogonal-out_sharding": lambda m: m.orthogonal()(KEY, (4, 4), None,
                                                        jax.sharding.PartitionSpec()),
    "delta_orthogonal-2d": lambda m: m.delta_orthogonal()(KEY, (4, 4)),
    "delta_orthogonal-in>out": lambda m: m.delta_orthogonal()(KEY, (3, 8, 4)),
    "delta_orthogonal-out_sharding": lambda m: m.delta_orthogonal()(
        KEY, (3, 4, 4), None, jax.sharding.PartitionSpec()),
    "float-dimension": lambda m: m.normal()(KEY, (2.5, 4)),
    "float-dimension-vs": lambda m: m.lecun_normal()(KEY, (2.0, 4)),
    "float-dimension-fill": lambda m: m.zeros(KEY, (2.0, 4)),
    "string-shape": lambda m: m.uniform()(KEY, "ab"),
    "bad-dtype-name": lambda m: m.uniform()(KEY, (2, 3), "nope"),
    "out_sharding-a-string": lambda m: m.uniform()(KEY, (3,), None, "x"),
    "out_sharding-spec-outside-a-mesh": lambda m: m.normal()(KEY, (3,), None,
                                                             jax.sharding.PartitionSpec("x")),
    "constant-complex-into-float": lambda m: m.constant(1 + 2j)(KEY, (2,), jnp.float32),
}


@pytest.mark.filterwarnings("ignore:Casting complex values to real")  # jax's, before it raises
@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_calls_raise_jaxs_exception_type(case):
    theirs, ours = _raises_like_jax(BAD_CALLS[case])
    if "batch-of" in case:
        assert "single key" in str(ours)


def test_messages_match_jaxs_test_regexes():
    # jax's tests/nn_test.py::testVarianceScalingError
    with pytest.raises(ValueError, match="Can't compute input and output sizes of a 1-dimensional"
                       " weights tensor with default in_axis. Must be at least 2D or specify"
                       " in_axis explicitly."):
        xf.variance_scaling(1.0, "fan_avg", "truncated_normal")(KEY, (5,))
    with pytest.raises(ValueError, match="invalid mode for variance scaling initializer: fan_sum"):
        xf.variance_scaling(1.0, "fan_sum", "normal")
    with pytest.raises(ValueError, match="invalid distribution for variance scaling initializer"):
        xf.variance_scaling(1.0, "fan_in", "cauchy")
    with pytest.raises(ValueError, match="Delta orthogonal initializer requires a 3D, 4D or 5D"):
        xf.delta_orthogonal()(KEY, (4, 4))
    with pytest.raises(ValueError, match="`fan_in` must be less or equal than `fan_out`"):
        xf.delta_orthogonal()(KEY, (3, 8, 4))


@pytest.mark.parametrize("shape", [(-1, 4), (4, -2), (-3,)], ids=str)
@pytest.mark.parametrize("name", ["normal", "uniform", "lecun_normal", "zeros", "orthogonal"])
def test_negative_dimensions_are_rejected_with_a_type_error(name, shape):
    # jax lets some through to an XLA error (or, in xinit 0.1, to a garbage array)
    with pytest.raises(TypeError, match="Shapes must be 1D sequences of concrete values of integer"):
        FACTORIES[name](xf)(KEY, shape)


@pytest.mark.parametrize("name", ["normal", "uniform", "zeros", "ones", "constant", "truncated_normal"])
def test_an_int_shape_is_a_1d_shape_as_in_jax(name):
    ours, theirs = FACTORIES[name](xf)(KEY, 5), FACTORIES[name](jinit)(KEY, 5)
    assert ours.shape == theirs.shape == (5,)
    assert FACTORIES[name](xf)(KEY, [2, 3]).shape == (2, 3)
    assert FACTORIES[name](xf)(KEY, (np.int64(2), True)).shape == (2, 1)  # as jax reads them


def test_arguments_are_checked_when_the_initializer_is_built():
    jinit.variance_scaling(1.0, "fan_avgg", "normal")  # builds fine in jax
    with pytest.raises(ModeError, match=r"mode must be one of \['fan_in', .*got mode='fan_avgg'"):
        xf.variance_scaling(1.0, "fan_avgg", "normal")
    with pytest.raises(BoundsError):  # jax returns NaN here
        xf.variance_scaling(-1.0, "fan_in", "normal")
    with pytest.raises(BoundsError):  # jax returns garbage (a constant) here
        xf.truncated_normal(1.0, lower=2.0, upper=1.0)
    with pytest.raises(TypeError):
        xf.lecun_normal(in_axis="0")
    with pytest.raises(TypeError):
        xf.orthogonal(column_axis=1.5)
    with pytest.raises(TypeError, match="scalar"):
        xf.constant(np.ones(3))  # jax broadcasts arrays; xinit takes one value


def test_nothing_is_drawn_when_a_call_is_rejected():
    from xinit.core.debug import compile_count

    before = compile_count()
    for case in ("uniform-int32", "lecun_normal-zero-size", "float-dimension", "orthogonal-out_sharding"):
        with pytest.raises((ValueError, TypeError, NotImplementedError, ZeroDivisionError)):
            BAD_CALLS[case](xf)
    assert compile_count() == before


# ------------------------------------------------------------ keys, values, objects


@pytest.mark.parametrize("make", [xf.he_uniform, xf.torch_init.kaiming_uniform],
                         ids=["he_uniform", "torch_init.kaiming_uniform"])
def test_same_key_same_values_different_key_different_values(make):
    init = make()
    a, b = init(KEY, (30, 20)), init(KEY, (30, 20))
    c = init(jax.random.key(1), (30, 20))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # raw uint32[2] keys and int seeds name the same key as jax.random.key
    assert np.array_equal(init(jax.random.PRNGKey(0), (30, 20)), a)
    assert np.array_equal(init(0, (30, 20)), a)


def test_initializers_are_hashable_comparable_picklable_and_print_their_call():
    a, b = xf.uniform(0.5), xf.uniform(0.5)
    assert a == b and hash(a) == hash(b) and a != xf.uniform(0.25)
    assert xf.lecun_normal() == xf.lecun_normal() != xf.lecun_normal(in_axis=0)
    for init in (a, xf.lecun_normal(), xf.delta_orthogonal(), xf.zeros):
        restored = pickle.loads(pickle.dumps(init))
        assert restored == init
        assert np.array_equal(restored(KEY, (3, 3, 4)), init(KEY, (3, 3, 4)))
    assert repr(xf.uniform(0.5)) == "xinit.flax.uniform(scale=0.5)"
    assert repr(xf.zeros) == "xinit.flax.zeros()"
    assert "in_axis=-2" in repr(xf.lecun_normal())


def test_import_never_imports_torch():
    code = "import sys, xinit.flax; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_the_first_call_in_a_process_may_be_inside_jit():
    # The core's one-time self-check must not be traced into the user's program.
    code = (
        "import jax, flax.linen as nn, xinit.flax as xf\n"
        "m = nn.Dense(8, kernel_init=xf.he_uniform())\n"
        "p = jax.jit(m.init)(jax.random.key(0), jax.numpy.ones((1, 4)))\n"
        "print(p['params']['kernel'].shape)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(4, 8)"


def test_moved_names_say_where_they_went():
    with pytest.raises(AttributeError, match=r"torch_init\.linear_kernel"):
        xf.torch_linear_kernel  # noqa: B018
    with pytest.raises(AttributeError, match=r"torch_init\.trunc_normal"):
        xf.trunc_normal  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        xf.nonsense  # noqa: B018


def test_calculate_gain_is_reachable_from_both_adapters():
    from xinit.core import calculate_gain

    assert xf.calculate_gain is calculate_gain
    xt = pytest.importorskip("xinit.torch")
    assert xt.calculate_gain is calculate_gain


# ------------------------------------------------------------ jit, eval_shape, Flax


@pytest.mark.parametrize("name", FACTORIES)
def test_works_inside_jit_and_under_eval_shape(name):
    init, shape = FACTORIES[name](xf), shape_of(name)
    jitted = jax.jit(lambda k: init(k, shape, jnp.float32))(KEY)
    assert jitted.shape == shape and jitted.dtype == np.float32
    assert np.allclose(jitted, init(KEY, shape, jnp.float32), atol=1e-5)
    abstract = jax.eval_shape(lambda k: init(k, shape, jnp.bfloat16), KEY)
    assert abstract.shape == shape and abstract.dtype == jnp.bfloat16


def _swapped_flax_run(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a process where flax was imported after jax.nn.initializers was swapped."""
    prelude = (
        "import jax.nn.initializers as ji, xinit.flax as xf\n"
        "for n in xf.JAX_NAMES: setattr(ji, n, getattr(xf, n))\n"
        "import jax, jax.numpy as jnp, numpy as np, flax.linen as nn\nfrom flax import nnx\n"
    )
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          timeout=300)


def test_flax_layers_with_their_defaults_swapped_for_xinit():
    code = (
        "from xinit.flax import JaxInitializer\n"
        "assert isinstance(nn.linear.default_kernel_init, JaxInitializer)\n"
        "v = nn.Dense(300).init(jax.random.key(0), jnp.zeros((1, 400)))['params']\n"
        "k = np.asarray(v['kernel'])\n"
        "assert np.all(v['bias'] == 0) and abs(k.std() * 20 - 1) < 0.02\n"
        "assert np.abs(k).max() <= 2 / 20 / 0.87962566103423978 * (1 + 1e-6)\n"  # truncated lecun
        "t = nn.Embed(1000, 64).init(jax.random.key(0), jnp.zeros((1,), jnp.int32))\n"
        "assert abs(float(t['params']['embedding'].std()) * 8 - 1) < 0.03\n"  # N(0, 1/features)
        "cell = nn.OptimizedLSTMCell(8)\n"
        "c = cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(1), (1, 4)),"
        " jnp.zeros((1, 4)))\n"
        "h = np.asarray(c['params']['hi']['kernel'])\n"
        "assert np.allclose(h.T @ h, np.eye(8), atol=1e-5)\n"  # orthogonal recurrent kernels
        "lin = nnx.Linear(16, 32, rngs=nnx.Rngs(0))\n"
        "assert np.all(lin.bias[...] == 0) and lin.kernel[...].shape == (16, 32)\n"
        "print('ok')"
    )
    r = _swapped_flax_run(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"


# The same small model with JAX's names and with torch_init's: the same expected statistics
# (he_normal and torch's kaiming_normal(relu) share their std, glorot_uniform and
# xavier_uniform their bound).
VOCABULARIES = {
    "jax-names": lambda: dict(conv=xf.he_normal(), conv_bias=xf.zeros, embed=xf.normal(0.02),
                              d1=xf.glorot_uniform(), d1_bias=xf.constant(0.1),
                              d2=xf.lecun_normal(), d2_bias=xf.zeros_init()),
    "torch_init": lambda: dict(conv=xf.torch_init.kaiming_normal(nonlinearity="relu"),
                               conv_bias=xf.torch_init.zeros(),
                               embed=xf.torch_init.normal(0.0, 0.02, layout=xf.torch_init.IDENTITY),
                               d1=xf.torch_init.xavier_uniform(),
                               d1_bias=xf.torch_init.constant(0.1),
                               d2=xf.lecun_normal(), d2_bias=xf.torch_init.zeros()),
}


class LinenNet(nn.Module):
    """Conv -> Dense -> Dense with an embedding, every parameter from xinit.flax."""

    inits: dict

    @nn.compact
    def __call__(self, images, tokens):
        i = self.inits
        x = nn.Conv(32, (3, 3), kernel_init=i["conv"], bias_init=i["conv_bias"])(images)
        x = nn.relu(x).mean(axis=(1, 2))
        x = x + nn.Embed(1000, 32, embedding_init=i["embed"])(tokens).mean(axis=1)
        x = nn.Dense(400, kernel_init=i["d1"], bias_init=i["d1_bias"])(x)
        return nn.Dense(10, kernel_init=i["d2"], bias_init=i["d2_bias"])(nn.tanh(x))


def _check_model_stats(conv_k, conv_b, table, d1_k, d1_b, d2_k, out, batch):
    assert conv_k.shape == (3, 3, 16, 32) and np.all(conv_b == 0)
    assert abs(conv_k.std() / math.sqrt(2 / 144) - 1) < 0.1  # He / kaiming(relu), fan_in 3*3*16
    assert abs(table.std() / 0.02 - 1) < 0.03
    assert d1_k.shape == (32, 400) and np.all(d1_b == np.float32(0.1))
    assert np.abs(d1_k).max() <= math.sqrt(6 / 432)  # Glorot / Xavier uniform, fans 32 + 400
    assert abs(d2_k.std() / math.sqrt(1 / 400) - 1) < 0.1  # lecun, fan_in 400
    assert out.shape == (batch, 10) and np.isfinite(out).all()


@pytest.mark.parametrize("vocabulary", VOCABULARIES)
def test_linen_model_initializes_runs_and_has_the_expected_statistics(vocabulary):
    model = LinenNet(VOCABULARIES[vocabulary]())
    images, tokens = jnp.ones((4, 8, 8, 16)), jnp.arange(12).reshape(4, 3)
    params = jax.jit(model.init)(KEY, images, tokens)["params"]
    out = np.asarray(jax.jit(model.apply)({"params": params}, images, tokens))
    p = jax.tree.map(np.asarray, params)
    _check_model_stats(p["Conv_0"]["kernel"], p["Conv_0"]["bias"], p["Embed_0"]["embedding"],
                       p["Dense_0"]["kernel"], p["Dense_0"]["bias"], p["Dense_1"]["kernel"], out, 4)


class NnxNet(nnx.Module):
    def __init__(self, inits: dict, rngs: nnx.Rngs):
        i = inits
        self.conv = nnx.Conv(16, 32, (3, 3), kernel_init=i["conv"], bias_init=i["conv_bias"],
                             rngs=rngs)
        self.embed = nnx.Embed(1000, 32, embedding_init=i["embed"], rngs=rngs)
        self.d1 = nnx.Linear(32, 400, kernel_init=i["d1"], bias_init=i["d1_bias"], rngs=rngs)
        self.d2 = nnx.Linear(400, 10, kernel_init=i["d2"], bias_init=i["d2_bias"], rngs=rngs)

    def __call__(self, images, tokens):
        x = nnx.relu(self.conv(images)).mean(axis=(1, 2)) + self.embed(tokens).mean(axis=1)
        return self.d2(nnx.tanh(self.d1(x)))


@pytest.mark.parametrize("vocabulary", VOCABULARIES)
def test_nnx_model_initializes_runs_and_has_the_expected_statistics(vocabulary):
    model = NnxNet(VOCABULARIES[vocabulary](), nnx.Rngs(params=0))
    images, tokens = jnp.ones((4, 8, 8, 16)), jnp.arange(12).reshape(4, 3)
    out = np.asarray(nnx.jit(lambda m, x, t: m(x, t))(model, images, tokens))
    v = lambda p: np.asarray(p[...])  # noqa: E731
    _check_model_stats(v(model.conv.kernel), v(model.conv.bias), v(model.embed.embedding),
                       v(model.d1.kernel), v(model.d1.bias), v(model.d2.kernel), out, 4)


def test_nnx_model_under_nnx_eval_shape():
    abstract = nnx.eval_shape(lambda: NnxNet(VOCABULARIES["jax-names"](), nnx.Rngs(0)))
    assert abstract.d1.kernel.shape == (32, 400)


def test_linen_lstm_in_bfloat16_works_where_jaxs_orthogonal_fails():
    cell = nn.LSTMCell(8, recurrent_kernel_init=xf.orthogonal(), param_dtype=jnp.bfloat16)
    carry = cell.initialize_carry(KEY, (1, 4))
    params = cell.init(KEY, carry, jnp.zeros((1, 4)))["params"]
    h = np.asarray(params["hi"]["kernel"], np.float32)
    assert params["hi"]["kernel"].dtype == jnp.bfloat16
    assert np.allclose(h.T @ h, np.eye(8), atol=3e-2)
    with pytest.raises(NotImplementedError):  # the reference, for the record
        nn.LSTMCell(8, param_dtype=jnp.bfloat16).init(KEY, carry, jnp.zeros((1, 4)))
