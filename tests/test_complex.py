"""Complex dtypes (complex64, complex128), against the reference in the same test.

torch.nn.init draws complex tensors for uniform_, normal_, the xavier/kaiming
families and sparse_ (and fills them with constant_/eye_/dirac_); JAX's
initializers draw complex normals, complex variance scaling (a uniform disk, a
modulus-truncated normal) and unitary matrices. Each case compares xinit's
real parts, imaginary parts and E|w|^2 with the reference's (two-sample KS,
p > 1e-4 on >= 20k values, fixed seeds), and the cases each reference refuses
raise the same exception class in xinit. For the same key, xinit.torch and
xinit.flax.torch_init give the same complex values (the real view is drawn
once, in the canonical layout).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import xinit.flax as xf
from xinit.core import sample, specs
from xinit.core.errors import DtypeError

torch = pytest.importorskip("torch")
import xinit.torch as xt  # noqa: E402

P_MIN = 1e-4
KEY = jax.random.key(7)
jinit = jax.nn.initializers
TORCH_COMPLEX = {"c64": torch.complex64, "c128": torch.complex128}
JAX_COMPLEX = {"c64": jnp.complex64, "c128": jnp.complex128}


def ks(a, b):
    return stats.ks_2samp(np.ravel(a), np.ravel(b)).pvalue


def assert_same_complex_distribution(ours, theirs, power_rtol=0.03):
    ours, theirs = np.asarray(ours).ravel(), np.asarray(theirs).ravel()
    assert np.iscomplexobj(ours) and np.iscomplexobj(theirs)
    assert ours.size >= 20_000
    assert ks(ours.real, theirs.real) > P_MIN
    assert ks(ours.imag, theirs.imag) > P_MIN
    assert ks(np.abs(ours), np.abs(theirs)) > P_MIN
    p_ours, p_theirs = np.mean(np.abs(ours) ** 2), np.mean(np.abs(theirs) ** 2)
    assert abs(p_ours / p_theirs - 1) < power_rtol  # E|w|^2


# ------------------------------------------------------------ xinit.torch vs torch.nn.init

TORCH_CASES = {
    "uniform_": ((-0.5, 1.5), (300, 100)),
    "normal_": ((0.2, 0.7), (300, 100)),
    "xavier_uniform_": ((1.3,), (96, 64, 3, 3)),
    "xavier_normal_": ((), (300, 100)),
    "kaiming_uniform_": ((0.0, "fan_in", "relu"), (96, 64, 3, 3)),
    "kaiming_normal_": ((0.0, "fan_out", "relu"), (300, 100)),
}


@pytest.mark.parametrize("dt", TORCH_COMPLEX)
@pytest.mark.parametrize("name", TORCH_CASES)
def test_torch_drop_ins_on_complex_tensors_are_distributed_as_torch(name, dt):
    args, shape = TORCH_CASES[name]
    gen = torch.Generator().manual_seed(0)
    theirs = getattr(torch.nn.init, name)(torch.empty(shape, dtype=TORCH_COMPLEX[dt]), *args,
                                          generator=gen)
    t = torch.empty(shape, dtype=TORCH_COMPLEX[dt])
    ours = getattr(xt, name)(t, *args, key=KEY)
    assert ours is t and ours.dtype == TORCH_COMPLEX[dt]
    assert_same_complex_distribution(ours.numpy(), theirs.numpy())


@pytest.mark.parametrize("dt", TORCH_COMPLEX)
def test_sparse_on_complex_tensors_works_as_torch(dt):
    # xinit 0.1 raised here, saying (wrongly) that torch does too
    shape, sparsity, std = (40, 800), 0.3, 0.05
    torch.manual_seed(0)
    theirs = torch.nn.init.sparse_(torch.empty(shape, dtype=TORCH_COMPLEX[dt]), sparsity, std)
    ours = xt.sparse_(torch.empty(shape, dtype=TORCH_COMPLEX[dt]), sparsity, std, key=KEY)
    assert ours.dtype == TORCH_COMPLEX[dt]
    zeros = math.ceil(sparsity * shape[0])
    assert ((ours == 0).sum(0) == zeros).all() and ((theirs == 0).sum(0) == zeros).all()
    assert_same_complex_distribution(ours[ours != 0].numpy(), theirs[theirs != 0].numpy())


@pytest.mark.parametrize("name, args", [("trunc_normal_", ()), ("orthogonal_", ())])
def test_torch_refuses_these_on_complex_tensors_and_so_does_xinit(name, args):
    with pytest.raises(Exception) as theirs:  # noqa: B017 - whatever torch raises
        getattr(torch.nn.init, name)(torch.empty(8, 8, dtype=torch.complex64), *args)
    t = torch.zeros(8, 8, dtype=torch.complex64)
    state = torch.random.get_rng_state()
    with pytest.raises(type(theirs.value)):
        getattr(xt, name)(t, *args)
    assert torch.equal(t, torch.zeros(8, 8, dtype=torch.complex64))  # untouched
    assert torch.equal(torch.random.get_rng_state(), state)  # no seed drawn


@pytest.mark.parametrize("name, args", [("constant_", (2.5,)), ("ones_", ()), ("zeros_", ()),
                                        ("eye_", ())])
def test_fills_on_complex_tensors_are_torchs(name, args):
    theirs = getattr(torch.nn.init, name)(torch.empty(4, 6, dtype=torch.complex128), *args)
    ours = getattr(xt, name)(torch.empty(4, 6, dtype=torch.complex128), *args)
    assert torch.equal(ours, theirs)


# ------------------------------------------------------------ xinit.flax vs jax.nn.initializers

JAX_CASES = {
    "normal": lambda m: m.normal(0.3),
    "vs-uniform-disk": lambda m: m.variance_scaling(2.0, "fan_in", "uniform"),
    "vs-normal": lambda m: m.variance_scaling(1.0, "fan_avg", "normal"),
    "vs-truncated-modulus": lambda m: m.variance_scaling(1.0, "fan_in", "truncated_normal"),
    "glorot_uniform": lambda m: m.glorot_uniform(),
    "he_normal": lambda m: m.he_normal(),
    "lecun_normal-conv": lambda m: m.lecun_normal(),
}
JAX_SHAPES = {"lecun_normal-conv": (3, 3, 64, 48)}


@pytest.mark.parametrize("dt", JAX_COMPLEX)
@pytest.mark.parametrize("case", JAX_CASES)
def test_jax_names_on_complex_dtypes_are_distributed_as_jax(case, dt):
    shape = JAX_SHAPES.get(case, (300, 100))
    with jax.enable_x64(dt == "c128"):
        ours = JAX_CASES[case](xf)(jax.random.key(1), shape, JAX_COMPLEX[dt])
        theirs = JAX_CASES[case](jinit)(jax.random.key(2), shape, JAX_COMPLEX[dt])
    assert ours.dtype == theirs.dtype == np.dtype(JAX_COMPLEX[dt]) and ours.shape == shape
    assert_same_complex_distribution(ours, theirs)


@pytest.mark.parametrize("case, bound", [
    ("vs-uniform-disk", lambda var: math.sqrt(2 * var)),  # disk of radius sqrt(2 var)
    ("vs-truncated-modulus", lambda var: 2 * math.sqrt(var) / 0.95311164380491208),
])
def test_complex_variance_scaling_has_jaxs_modulus_bound(case, bound):
    shape = (300, 100)
    var = {"vs-uniform-disk": 2.0, "vs-truncated-modulus": 1.0}[case] / 300
    for module in (xf, jinit):
        w = np.abs(np.asarray(JAX_CASES[case](module)(KEY, shape, jnp.complex64)))
        assert w.max() <= bound(var) * (1 + 1e-5) and w.max() > 0.99 * bound(var)


@pytest.mark.parametrize("shape, column_axis", [((5, 7), -1), ((7, 5), -1), ((6, 6), 0),
                                                ((3, 4, 12), -1)], ids=str)
@pytest.mark.parametrize("dt", JAX_COMPLEX)
def test_orthogonal_on_complex_dtypes_is_unitary_as_jax(shape, column_axis, dt):
    with jax.enable_x64(dt == "c128"):
        for module in (xf, jinit):
            q = np.asarray(module.orthogonal(2.0, column_axis)(KEY, shape, JAX_COMPLEX[dt]))
            assert q.dtype == np.dtype(JAX_COMPLEX[dt])
            m = np.moveaxis(q, column_axis, -1).reshape(-1, shape[column_axis]) / 2.0
            small = m.conj().T @ m if m.shape[0] >= m.shape[1] else m @ m.conj().T
            assert np.allclose(small, np.eye(len(small)), atol=1e-5)


def test_unitary_entries_are_distributed_as_jaxs():
    ours = xf.orthogonal()(jax.random.key(1), (160, 160), jnp.complex64)
    theirs = jinit.orthogonal()(jax.random.key(2), (160, 160), jnp.complex64)
    assert_same_complex_distribution(ours, theirs)


def test_delta_orthogonal_on_complex_dtypes():
    w = np.asarray(xf.delta_orthogonal()(KEY, (3, 3, 4, 6), jnp.complex64))
    ref = np.asarray(jinit.delta_orthogonal()(KEY, (3, 3, 4, 6), jnp.complex64))
    assert w.dtype == ref.dtype and np.array_equal(w != 0, ref != 0)
    assert np.allclose(w[1, 1] @ w[1, 1].conj().T, np.eye(4), atol=1e-5)


# ------------------------------------------------------------ the same values in torch and Flax


FLAX_CASES = {
    "uniform": ((-0.5, 1.5), (30, 20)),
    "normal": ((0.2, 0.7), (30, 20)),
    "xavier_normal": ((), (16, 8, 3, 3)),
    "kaiming_uniform": ((0.0, "fan_in", "relu"), (16, 8, 3, 3)),
    "sparse": ((0.3, 0.05), (30, 20)),
}


@pytest.mark.parametrize("dt", TORCH_COMPLEX)
@pytest.mark.parametrize("name", FLAX_CASES)
def test_torch_init_complex_kernels_are_xinit_torchs_weights_bit_for_bit(name, dt):
    args, shape = FLAX_CASES[name]
    w = getattr(xt, name + "_")(torch.empty(shape, dtype=TORCH_COMPLEX[dt]), *args, key=KEY)
    perm = (*range(2, len(shape)), 1, 0)
    k = xf.torch_init.__dict__[name](*args)(KEY, tuple(shape[p] for p in perm), JAX_COMPLEX[dt])
    expected = w.permute(*perm).contiguous().numpy()
    got = np.asarray(k)
    assert got.dtype == expected.dtype
    assert np.array_equal(got.view(np.uint8), expected.view(np.uint8))


@pytest.mark.parametrize("spec", [specs.Uniform(-1, 1), specs.VarianceScaling(1.0, "fan_in", "uniform"),
                                  specs.VarianceScaling(1.0, "fan_in", "truncated_normal")],
                         ids=["uniform", "disk", "modulus-truncated"])
def test_complex_draws_inside_jit_are_the_eager_ones(spec):
    shape = (3, 3, 8, 16)
    eager = np.asarray(sample(spec, KEY, shape, jnp.complex64))
    jitted = np.asarray(jax.jit(lambda k: sample(spec, k, shape, jnp.complex64))(KEY))
    assert np.allclose(jitted, eager, rtol=1e-6, atol=1e-7)


def test_a_complex_draw_is_its_real_view():
    # element i's parts sit at counters 2i and 2i+1: the real view of the draw
    z = np.asarray(sample(specs.Uniform(0, 1), KEY, (5, 7), jnp.complex64))
    parts = np.asarray(sample(specs.Uniform(0, 1), KEY, (5, 7, 2), jnp.float32))
    assert np.array_equal(z.view(np.float32).reshape(5, 7, 2), parts)


@pytest.mark.parametrize("spec", [specs.TruncNormal(), specs.TruncatedNormal()],
                         ids=["torch trunc_normal", "jax truncated_normal"])
def test_truncated_normals_have_no_complex_form(spec):
    with pytest.raises(DtypeError, match="complex"):
        sample(spec, KEY, (4, 4), jnp.complex64)
