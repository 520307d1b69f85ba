"""Fidelity of xinit against torch.nn.init, run side by side in each test.

The full matrix runs on the torch drop-in; the last section runs every
initializer through the other backends (xinit.core, xinit.flax) too.

Every random initializer is drawn by torch (seeded generator) and by xinit (fixed
keys) on the same shapes, arguments and dtypes, and compared by a two-sample KS
test, exact bounds, and the standard deviation the formula predicts. Seeds are
fixed, so each test's outcome is deterministic; sample sizes (>= 20k values) and
the p > 1e-4 threshold are chosen so that agreeing distributions pass with a wide
margin and a wrong scale, bound or truncation fails.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import torch
from scipy import stats

import xinit.core
import xinit.torch as xt
from xinit.core import FLAX

# far-tail trunc_normal cases warn (correctly, in both libraries)
pytestmark = pytest.mark.filterwarnings("ignore:mean is more than 2 std from")

MIN_SAMPLES = 20_000
KS_CAP = 200_000  # KS on more values only detects float rounding noise
P_MIN = 1e-4

LINEAR = (300, 100)
CONV1D = (32, 16, 5)
CONV2D = (64, 32, 3, 3)
CONV3D = (16, 8, 3, 3, 3)
CONVT2D = (32, 64, 4, 4)  # ConvTranspose2d(32 -> 64*groups) weight: (in, out/groups, kh, kw)
TINY = (2, 3)
LARGE = (1024, 1024)
VECTOR = (30_000,)
FAN_SHAPES = [LINEAR, CONV1D, CONV2D, CONV3D, CONVT2D, TINY, LARGE]

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64}


def _fans(shape):
    return torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


def draw_both(name, shape, kwargs, dtype=torch.float32, seed=0):
    """Pooled draws of torch.nn.init.<name> and xinit.torch.<name>, >= MIN_SAMPLES each."""
    reps = max(1, math.ceil(MIN_SAMPLES / math.prod(shape)))
    gen = torch.Generator().manual_seed(seed)
    torch_fn, xinit_fn = getattr(torch.nn.init, name), getattr(xt, name)
    theirs = [
        torch_fn(torch.empty(shape, dtype=dtype), **kwargs, generator=gen) for _ in range(reps)
    ]
    ours = [
        xinit_fn(torch.empty(shape, dtype=dtype), **kwargs, key=seed * 100_003 + i)
        for i in range(reps)
    ]
    for t in ours:
        assert t.dtype == dtype and tuple(t.shape) == tuple(shape)
    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts]).double().numpy()  # noqa: E731
    return flat(theirs), flat(ours)


def assert_same_distribution(theirs, ours):
    p = stats.ks_2samp(theirs[:KS_CAP], ours[:KS_CAP]).pvalue
    assert p > P_MIN, f"KS p={p:.2e}: xinit and torch.nn.init differ in distribution"


def assert_std(values, expected, what):
    n = len(values)
    # sample std of n iid values has relative sd ~ sqrt((kurtosis - 1) / 4n) <= 1/sqrt(2n)
    # for the distributions here; 8 of those is never reached by chance.
    tol = 8 / math.sqrt(2 * n)
    observed = values.std()
    assert abs(observed / expected - 1) < tol, (
        f"{what}: std {observed:.6g}, expected {expected:.6g}"
    )


def check(name, shape, kwargs, expected_std, bounds=None, dtype=torch.float32):
    theirs, ours = draw_both(name, shape, kwargs, dtype)
    assert_same_distribution(theirs, ours)
    assert_std(ours, expected_std, "xinit")
    assert_std(theirs, expected_std, "torch")  # the formula itself is right
    if bounds is not None:
        lo, hi = bounds
        assert ours.min() >= lo and ours.max() <= hi
        assert theirs.min() >= lo and theirs.max() <= hi


# ---------------------------------------------------------------- uniform/normal


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [VECTOR, TINY, LINEAR], ids=str)
@pytest.mark.parametrize("a,b", [(0.0, 1.0), (-3.0, 2.0)], ids=str)
def test_uniform(a, b, shape, dtype):
    check("uniform_", shape, dict(a=a, b=b), (b - a) / math.sqrt(12), (a, b), DTYPES[dtype])


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_uniform_excludes_upper_bound(dtype):
    _, ours = draw_both("uniform_", (200_000,), dict(a=-1.0, b=1.0), DTYPES[dtype])
    assert ours.max() < 1.0 and ours.min() >= -1.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [VECTOR, TINY, CONV2D], ids=str)
@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.5, 0.02)], ids=str)
def test_normal(mean, std, shape, dtype):
    theirs, ours = draw_both("normal_", shape, dict(mean=mean, std=std), DTYPES[dtype])
    assert_same_distribution(theirs, ours)
    assert_std(ours, std, "xinit")
    assert abs(ours.mean() - mean) < 6 * std / math.sqrt(len(ours))


# ---------------------------------------------------------------- trunc_normal

TRUNC_CASES = [
    (0.0, 1.0, -2.0, 2.0),  # p > 0.3 branch of torch's sampler
    (0.0, 0.02, -0.04, 0.04),  # ViT-style two-sigma truncation
    (0.0, 0.02, -2.0, 2.0),  # default absolute bounds: no truncation at all
    (0.5, 1.0, 0.0, 3.0),  # asymmetric
    (0.0, 1.0, 1.0, 4.0),  # one-sided tail, p <= 0.3 branch
    (0.0, 1.0, 3.0, 5.0),  # far tail: inverse CDF must stay accurate here
    (-1.0, 0.5, -1.1, -0.9),  # narrow
]


def _torch_rejects_from_uniform(mean, std, a, b):
    # torch 2.13 samples by rejection from uniform_(a, b) when the mass in [a, b] is <= 0.3
    return stats.norm.cdf((b - mean) / std) - stats.norm.cdf((a - mean) / std) <= 0.3


def _exact_trunc_normal(mean, std, a, b, n, dtype):
    exact = stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std)
    return torch.tensor(exact.rvs(n, random_state=1)).to(dtype).double().numpy()


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16", "f64"])
@pytest.mark.parametrize("mean,std,a,b", TRUNC_CASES, ids=str)
def test_trunc_normal(mean, std, a, b, dtype):
    expected = stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std).std()
    theirs, ours = draw_both(
        "trunc_normal_", VECTOR, dict(mean=mean, std=std, a=a, b=b), DTYPES[dtype]
    )
    if dtype in ("bf16", "f16") and _torch_rejects_from_uniform(mean, std, a, b):
        # torch's 16-bit rejection branch is skewed (see the test below): compare
        # with the exact distribution rounded to the dtype instead.
        theirs = _exact_trunc_normal(mean, std, a, b, len(ours), DTYPES[dtype])
    assert_same_distribution(theirs, ours)
    cast = lambda v: torch.tensor(v, dtype=DTYPES[dtype]).double().item()  # noqa: E731
    assert ours.min() >= cast(a) and ours.max() <= cast(b), "values left [a, b]"
    if dtype in ("f32", "f64"):
        assert_std(ours, expected, "xinit")


def test_trunc_normal_bf16_tail_is_exact_where_torch_is_skewed():
    # torch 2.13's rejection branch draws bf16 uniforms, which puts ~3x too much
    # mass on the lower bound; xinit rounds an exact float32 draw once.
    mean, std, a, b = 0.0, 1.0, 3.0, 5.0
    theirs, ours = draw_both(
        "trunc_normal_", (100_000,), dict(mean=mean, std=std, a=a, b=b), torch.bfloat16
    )
    exact = _exact_trunc_normal(mean, std, a, b, 100_000, torch.bfloat16)
    assert stats.ks_2samp(ours, exact).pvalue > P_MIN
    assert stats.ks_2samp(theirs, exact).pvalue < 1e-20
    assert abs((ours == 3.0).mean() - (exact == 3.0).mean()) < 0.005


def test_trunc_normal_against_scipy_in_the_far_tail():
    # a direct one-sample check against the exact truncated normal CDF
    mean, std, a, b = 0.0, 1.0, 4.0, 6.0
    ours = xt.trunc_normal_(
        torch.empty(100_000, dtype=torch.float64), mean, std, a, b, key=7
    ).numpy()
    p = stats.kstest(ours, stats.truncnorm(a, b).cdf).pvalue
    assert p > P_MIN


# ---------------------------------------------------------------- xavier / kaiming


@pytest.mark.parametrize("shape", FAN_SHAPES, ids=str)
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_xavier_uniform(shape, gain):
    fan_in, fan_out = _fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    check("xavier_uniform_", shape, dict(gain=gain), bound / math.sqrt(3), (-bound, bound))


@pytest.mark.parametrize("shape", FAN_SHAPES, ids=str)
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_xavier_normal(shape, gain):
    fan_in, fan_out = _fans(shape)
    check("xavier_normal_", shape, dict(gain=gain), gain * math.sqrt(2.0 / (fan_in + fan_out)))


def test_xavier_normal_is_untruncated():
    # torch's xavier_normal_ is a plain normal; jax's glorot_normal is truncated at 2 sigma
    _, ours = draw_both("xavier_normal_", LARGE, {})
    std = math.sqrt(2.0 / 2048)
    assert np.abs(ours).max() > 4 * std


KAIMING_ARGS = [
    dict(),  # leaky_relu with a=0: gain sqrt(2)
    dict(a=math.sqrt(5)),  # torch Linear/Conv default: U(+-1/sqrt(fan_in))
    dict(mode="fan_out", nonlinearity="relu"),
    dict(a=0.2, mode="FAN_OUT"),  # mode is case-insensitive
    dict(nonlinearity="tanh"),
    dict(nonlinearity="selu"),
    dict(nonlinearity="linear", mode="fan_out"),
]


def _kaiming_std(shape, kw):
    fan_in, fan_out = _fans(shape)
    fan = fan_out if kw.get("mode", "fan_in").lower() == "fan_out" else fan_in
    gain = torch.nn.init.calculate_gain(kw.get("nonlinearity", "leaky_relu"), kw.get("a", 0))
    return gain / math.sqrt(fan)


@pytest.mark.parametrize("shape", [LINEAR, CONV2D, CONVT2D, TINY], ids=str)
@pytest.mark.parametrize("kw", KAIMING_ARGS, ids=str)
def test_kaiming_uniform(kw, shape):
    std = _kaiming_std(shape, kw)
    bound = math.sqrt(3.0) * std
    check("kaiming_uniform_", shape, kw, std, (-bound, bound))


@pytest.mark.parametrize("shape", [LINEAR, CONV2D, CONVT2D, TINY], ids=str)
@pytest.mark.parametrize("kw", KAIMING_ARGS, ids=str)
def test_kaiming_normal(kw, shape):
    check("kaiming_normal_", shape, kw, _kaiming_std(shape, kw))


@pytest.mark.parametrize("shape", [CONV1D, CONV3D, LARGE], ids=str)
@pytest.mark.parametrize("name", ["kaiming_uniform_", "kaiming_normal_"])
def test_kaiming_more_shapes(name, shape):
    check(name, shape, {}, _kaiming_std(shape, {}))


@pytest.mark.parametrize("name", ["xavier_uniform_", "kaiming_uniform_", "kaiming_normal_"])
@pytest.mark.parametrize("dtype", ["f16", "bf16", "f64"])
def test_fan_based_in_other_dtypes(name, dtype):
    theirs, ours = draw_both(name, LINEAR, {}, DTYPES[dtype])
    assert_same_distribution(theirs, ours)


# ---------------------------------------------------------------- orthogonal

ORTHO_SHAPES = [(64, 64), (32, 100), (100, 32), (16, 4, 3, 3), (8, 3, 5)]


@pytest.mark.parametrize("shape", ORTHO_SHAPES, ids=str)
@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_orthogonal(shape, gain):
    w = xt.orthogonal_(torch.empty(shape, dtype=torch.float64), gain=gain, key=3)
    rows = shape[0]
    flat = w.reshape(rows, -1)
    gram = flat @ flat.T if rows <= flat.shape[1] else flat.T @ flat
    torch.testing.assert_close(
        gram, gain**2 * torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-10, rtol=0
    )
    theirs, ours = draw_both("orthogonal_", shape, dict(gain=gain))
    assert_same_distribution(theirs, ours)


def test_orthogonal_float32_is_orthogonal_to_float32_precision():
    w = xt.orthogonal_(torch.empty(256, 512), key=1)
    torch.testing.assert_close(w @ w.T, torch.eye(256), atol=2e-5, rtol=0)


def test_orthogonal_is_haar_distributed():
    # Under the Haar measure the first column is uniform on the sphere, so
    # Q[0, 0]**2 ~ Beta(1/2, (n-1)/2) and its sign is fair. A QR without the
    # sign(diag(R)) correction gives Q[0, 0] < 0 always (LAPACK's Householder).
    n, m = 16, 2000
    q00 = np.array(
        [
            xt.orthogonal_(torch.empty(n, n, dtype=torch.float64), key=i)[0, 0].item()
            for i in range(m)
        ]
    )

    def cdf(q):
        return 0.5 + 0.5 * np.sign(q) * stats.beta(0.5, (n - 1) / 2).cdf(q**2)

    assert stats.kstest(q00, cdf).pvalue > P_MIN


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_orthogonal_half_precision_is_supported(dtype):
    # a deliberate widening: torch's CPU QR rejects 16-bit tensors
    w = xt.orthogonal_(torch.empty(32, 64, dtype=DTYPES[dtype]), key=0).float()
    torch.testing.assert_close(w @ w.T, torch.eye(32), atol=0.05, rtol=0)


# ---------------------------------------------------------------- sparse

SPARSE_CASES = [
    ((100, 50), 0.1),
    ((100, 50), 0.5),
    ((1000, 30), 0.9),
    ((7, 500), 0.3),
    ((64, 64), 0.0),
]


@pytest.mark.parametrize("shape,sparsity", SPARSE_CASES, ids=str)
def test_sparse(shape, sparsity):
    rows = shape[0]
    zeros = math.ceil(sparsity * rows)
    w = xt.sparse_(torch.empty(shape), sparsity, std=0.02, key=11)
    assert ((w == 0).sum(0) == zeros).all(), (
        "every column must have exactly ceil(sparsity*rows) zeros"
    )
    gen = torch.Generator().manual_seed(0)
    theirs = torch.cat(
        [
            torch.nn.init.sparse_(torch.empty(shape), sparsity, 0.02, generator=gen).reshape(-1)
            for _ in range(max(1, MIN_SAMPLES // math.prod(shape)))
        ]
    )
    ours = torch.cat(
        [
            xt.sparse_(torch.empty(shape), sparsity, 0.02, key=i).reshape(-1)
            for i in range(max(1, MIN_SAMPLES // math.prod(shape)))
        ]
    )
    nz = lambda t: t[t != 0].double().numpy()  # noqa: E731
    assert_same_distribution(nz(theirs), nz(ours))
    assert_std(nz(ours), 0.02, "xinit nonzeros")


def test_sparse_zero_pattern_is_uniform_over_rows():
    # each row is zeroed in a column with probability zeros/rows
    rows, cols, sparsity = 10, 20_000, 0.3
    w = xt.sparse_(torch.empty(rows, cols), sparsity, key=5)
    per_row = (w == 0).float().mean(1)
    expected = math.ceil(sparsity * rows) / rows
    sd = math.sqrt(expected * (1 - expected) / cols)
    assert ((per_row - expected).abs() < 6 * sd).all()


@pytest.mark.parametrize("sparsity", [1.5, -0.5, -2.0, 1.0])
def test_sparse_out_of_range_sparsity_follows_torch(sparsity):
    shape = (4, 6)
    w = xt.sparse_(torch.empty(shape), sparsity, key=0)
    t = torch.nn.init.sparse_(torch.empty(shape), sparsity)
    assert torch.equal((w == 0).sum(0), (t == 0).sum(0))


# ---------------------------------------------------------------- deterministic


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    ],
    ids=str,
)
@pytest.mark.parametrize(
    "name,args",
    [("constant_", (0.3,)), ("constant_", (-2,)), ("ones_", ()), ("zeros_", ())],
    ids=str,
)
def test_fills_equal_torch_exactly(name, args, dtype):
    shape = (5, 7)
    theirs = getattr(torch.nn.init, name)(torch.empty(shape, dtype=dtype), *args)
    ours = getattr(xt, name)(torch.empty(shape, dtype=dtype), *args)
    assert torch.equal(ours, theirs)


def test_constant_large_int64_is_exact():
    v = 2**53 + 1
    assert torch.equal(
        xt.constant_(torch.empty(3, dtype=torch.int64), v), torch.full((3,), v, dtype=torch.int64)
    )


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4), (1, 9), (0, 3)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64], ids=str)
def test_eye_equals_torch_exactly(shape, dtype):
    assert torch.equal(
        xt.eye_(torch.empty(shape, dtype=dtype)),
        torch.nn.init.eye_(torch.empty(shape, dtype=dtype)),
    )


DIRAC_CASES = [
    ((4, 2, 3), 1),
    ((6, 3, 3, 3), 1),
    ((6, 3, 3, 3), 2),
    ((6, 2, 3, 3), 3),
    ((8, 4, 3, 3, 3), 2),
    ((3, 5, 4), 1),
    ((4, 4, 2, 4), 2),
    ((2, 6, 5, 5), 1),
]


@pytest.mark.parametrize("shape,groups", DIRAC_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32], ids=str)
def test_dirac_equals_torch_exactly(shape, groups, dtype):
    assert torch.equal(
        xt.dirac_(torch.empty(shape, dtype=dtype), groups),
        torch.nn.init.dirac_(torch.empty(shape, dtype=dtype), groups),
    )


# ---------------------------------------------------------------- complex


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
@pytest.mark.parametrize("name,shape,args", [("eye_", (3, 5), ()), ("dirac_", (6, 3, 3, 3), (2,)),
                                             ("constant_", (4, 4), (1 + 2j,)), ("zeros_", (4, 4), ())],
                         ids=lambda v: str(v))
def test_complex_fills_equal_torch_exactly(name, shape, args, dtype):
    theirs = getattr(torch.nn.init, name)(torch.full(shape, 7 + 7j, dtype=dtype), *args)
    ours = getattr(xt, name)(torch.full(shape, 7 + 7j, dtype=dtype), *args)
    assert torch.equal(ours, theirs)


def test_complex_uniform_and_normal_follow_torch():
    shape = (20_000,)
    gen = torch.Generator().manual_seed(0)
    for name, kw in [("uniform_", dict(a=-1.0, b=2.0)), ("normal_", dict(mean=0.5, std=2.0))]:
        theirs = getattr(torch.nn.init, name)(
            torch.empty(shape, dtype=torch.complex64), **kw, generator=gen
        )
        ours = getattr(xt, name)(torch.empty(shape, dtype=torch.complex64), **kw, key=1)
        for part in (torch.real, torch.imag):
            assert_same_distribution(part(theirs).double().numpy(), part(ours).double().numpy())


# ---------------------------------------------------------------- every backend

BACKEND_CASES = [
    ("uniform_", LINEAR, dict(a=-1.0, b=2.0)),
    ("normal_", CONV2D, dict(mean=0.1, std=0.02)),
    ("trunc_normal_", LINEAR, dict(mean=0.0, std=0.02, a=-0.04, b=0.04)),
    ("xavier_uniform_", CONV2D, {}),
    ("xavier_normal_", CONV1D, dict(gain=2.0)),
    ("kaiming_uniform_", CONV3D, dict(a=math.sqrt(5))),
    ("kaiming_normal_", LINEAR, dict(mode="fan_out", nonlinearity="relu")),
    ("orthogonal_", (64, 128), {}),
    ("sparse_", (200, 100), dict(sparsity=0.3)),
]


def backend_draw(backend, name, shape, kw, key):
    """xinit's draw through ``backend``, returned in torch layout as float64 numpy."""
    base = name[:-1]
    if backend == "core":
        return np.asarray(getattr(xinit.core, base)(key, shape, **kw), dtype=np.float64)
    xf = pytest.importorskip("xinit.flax")
    flax_shape = tuple(shape[p] for p in FLAX.inverse_permutation(len(shape)))
    arr = getattr(xf.torch_init, base)(**kw)(jax.random.key(key), flax_shape, np.float32)
    return np.asarray(arr, dtype=np.float64).transpose(FLAX.permutation(len(shape)))


@pytest.mark.parametrize("backend", ["core", "flax"])
@pytest.mark.parametrize("name,shape,kw", BACKEND_CASES, ids=lambda v: str(v))
def test_every_backend_matches_torch_nn_init(backend, name, shape, kw):
    reps = max(1, math.ceil(MIN_SAMPLES / math.prod(shape)))
    gen = torch.Generator().manual_seed(1)
    theirs = np.concatenate(
        [
            getattr(torch.nn.init, name)(torch.empty(shape), **kw, generator=gen)
            .reshape(-1)
            .double()
            .numpy()
            for _ in range(reps)
        ]
    )
    draws = [backend_draw(backend, name, shape, kw, 1000 + i) for i in range(reps)]
    assert draws[0].shape == shape
    ours = np.concatenate([d.reshape(-1) for d in draws])
    if name == "sparse_":
        zeros = math.ceil(kw["sparsity"] * shape[0])
        assert all(((d == 0).sum(0) == zeros).all() for d in draws)
        theirs, ours = theirs[theirs != 0], ours[ours != 0]
    assert_same_distribution(theirs, ours)
    if name in ("uniform_", "trunc_normal_"):
        lo, hi = kw["a"], kw["b"]
        assert ours.min() >= lo and ours.max() <= hi
