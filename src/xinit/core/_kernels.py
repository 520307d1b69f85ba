"""The compiled programs every sampler runs: xinit's only jit boundary.

Elementwise families (uniform, normal, trunc_normal, constant, eye, dirac) are
computed from each element's flat index alone, so one compiled program per
``(family, dtype, chunk size, segments)`` serves every tensor shape: the key,
the counter offset and the family's parameters are traced arguments. A tensor is
drawn as a sequence of fixed-size chunks (see :data:`CHUNK_SIZES`); the number of
programs a model needs does not grow with its number of distinct shapes.

Random bits come from threefry-2x32 with the *partitionable* counter layout
that ``jax.random`` uses by default: element ``i`` of a draw is hashed from the
64-bit counter ``i`` split into ``(hi, lo)`` words. The hash is written here in
``jax.numpy`` with its 20 rounds unrolled, which XLA:CPU runs ~5x faster than
JAX's own (rolled-loop) CPU lowering; values are bit-identical to
``jax.random.bits`` (tested), and :func:`self_check` falls back to
``jax.extend.random.threefry2x32_p`` should a JAX release ever disagree.

Floating-point draws for float16/bfloat16 are computed in float32 from 32 random
bits and rounded once at the end (as torch does), so their distribution is the
float32 one rounded, not the coarse 16-bit-bits draw of ``jax.random``.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy import special as jss

__all__ = [
    "CHUNK_SIZES",
    "FAMILIES",
    "Piece",
    "compute_dtype",
    "run_elementwise",
    "run_orthogonal",
    "run_sparse",
    "run_unitary",
    "run_sparse_complex",
    "compile_count",
    "self_check",
]

# Chunk sizes of the elementwise programs: a draw of n elements uses the smallest
# size >= n, or several chunks of the largest. Powers of 4 bound padding waste at
# 4x for small tensors (where it is cheap) and keep the program count small.
CHUNK_SIZES = tuple(4**k for k in range(5, 12))  # 1 Ki .. 4 Mi elements
MAX_CHUNK = CHUNK_SIZES[-1]

_U32 = np.uint32
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


class Family(NamedTuple):
    n_float: int  # float parameters per segment
    n_int: int  # int parameters per segment
    random: bool  # needs random bits (and a floating dtype)


FAMILIES = {
    "uniform": Family(2, 0, True),  # (low, high)
    "normal": Family(2, 0, True),  # (mean, std)
    "trunc_normal": Family(4, 0, True),  # (mean, std, a, b), absolute bounds
    "constant": Family(1, 0, False),  # (value,)
    "eye": Family(0, 1, False),  # (cols,)
    "dirac": Family(0, 4, False),  # (in_per_group... see _dirac)
    # complex values drawn on their real view (see _complex_pair_values)
    "complex_disk": Family(1, 0, True),  # (scale,): uniform on the disk of radius scale*sqrt(2)
    "complex_trunc_normal": Family(2, 0, True),  # (scale, upper): modulus truncated at upper
}
COMPLEX_PAIR_FAMILIES = ("complex_disk", "complex_trunc_normal")


class Piece(NamedTuple):
    """A drawn chunk: ``array[:valid]`` are the next ``valid`` values of the flat draw."""

    array: jax.Array
    valid: int


_COMPILES = 0


def compile_count() -> int:
    """How many xinit programs have been traced for compilation in this process."""
    return _COMPILES


def _count_trace() -> None:
    global _COMPILES
    _COMPILES += 1


def compute_dtype(dtype) -> np.dtype:
    """The dtype a family computes in: float32 for 16-bit floats, else the dtype."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype


# XLA:CPU options for xinit's programs. AVX-512 machines run the integer-heavy
# threefry hash up to ~2x faster with 512-bit vectors than with XLA's default
# preference of 256 bits; integer ops and the float epilogues give the same bits
# (tested against jax.random). Ignored where the CPU has no 512-bit vectors.
_CPU_COMPILER_OPTIONS = {"xla_cpu_prefer_vector_width": 512}
_use_cpu_options = True


def _default_platform() -> str:
    dev = jax.config.jax_default_device
    if dev is None:
        return jax.default_backend()
    return dev if isinstance(dev, str) else dev.platform


class _Program:
    """``jax.jit(fn)``, compiled ahead of time with :data:`_CPU_COMPILER_OPTIONS` on CPU.

    Under a trace (a user's ``jit``) it is the plain jitted function, so it inlines.
    Eager calls use one executable per (argument types, default device, x64 mode);
    compiling still goes through JAX, so its persistent compilation cache applies.
    """

    def __init__(self, fn, donate_argnums=()):
        self.jit = jax.jit(fn, donate_argnums=donate_argnums)
        self._executables = {}

    def lower(self, *args):
        return self.jit.lower(*args)

    def __call__(self, *args):
        if not _use_cpu_options or any(_is_tracer(a) for a in args):
            return self.jit(*args)
        dev = jax.config.jax_default_device
        sig = tuple((a.shape, a.dtype) for a in args)  # numpy or jax arrays
        cache_key = (sig, dev, jax.config.jax_enable_x64)
        exe = self._executables.get(cache_key)
        if exe is None:
            if _default_platform() != "cpu":
                return self.jit(*args)
            lowered = self.jit.lower(*args)
            try:
                exe = lowered.compile(compiler_options=_CPU_COMPILER_OPTIONS)
            except Exception:  # an XLA without the option: JAX's defaults
                exe = lowered.compile()
            self._executables[cache_key] = exe
            release_freed_memory()
        return exe(*args)


@functools.cache
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None


def release_freed_memory() -> None:
    """Hand memory the C heap holds but no longer uses back to the OS (glibc; else a no-op).

    XLA's compiler allocates and frees tens of MB per program; glibc keeps the
    freed pages in the process, where they count in its RSS for good. Called
    after each compilation (a few per process; ~1 ms): materializing the ~1B
    benchmark model peaked at 1.139x its parameter bytes instead of 1.148-1.152x.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _rotl(x, d):
    return (x << _U32(d)) | (x >> _U32(32 - d))


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), unrolled; elementwise."""
    k3 = k1 ^ k2 ^ _U32(0x1BD11BDA)
    ks = (k1, k2, k3)
    x1 = x1 + k1
    x2 = x2 + k2
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, r)
            x2 = x1 ^ x2
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + _U32(i + 1)
    return x1, x2


_use_own_threefry = True


def _hash(k1, k2, hi, lo):
    if _use_own_threefry:
        return threefry2x32(k1, k2, hi, lo)
    from jax.extend.random import threefry2x32_p

    return tuple(threefry2x32_p.bind(k1, k2, hi, lo))


def _unit_uniform(k1, k2, hi, lo, cdt):
    """``[0, 1)`` floats in ``cdt`` from the counters, exactly as ``jax.random.uniform``."""
    b1, b2 = _hash(k1, k2, hi, lo)
    finfo = jnp.finfo(cdt)
    if cdt == np.float64:
        bits = (b1.astype(np.uint64) << np.uint64(32)) | b2.astype(np.uint64)
        one = np.array(1.0, np.float64).view(np.uint64)
        mant = (bits >> np.uint64(64 - finfo.nmant)) | one
    else:
        bits = b1 ^ b2
        one = np.array(1.0, np.float32).view(np.uint32)
        mant = (bits >> _U32(32 - finfo.nmant)) | one
    return lax.bitcast_convert_type(mant, cdt) - cdt.type(1.0)


def _uniform_between(u, low, high):
    # jax.random.uniform's affine map, including its clamp at the lower bound.
    return lax.max(low, u * (high - low) + low)


def _standard_normal(u_fn, cdt):
    lo = np.nextafter(np.array(-1.0, cdt), np.array(0.0, cdt))
    u = _uniform_between(u_fn(), lo.astype(cdt), cdt.type(1.0))
    return cdt.type(np.sqrt(2)) * lax.erf_inv(u)


def _trunc_standard(u, lo, hi, p_lo, p_hi):
    """Inverse-CDF sample of N(0, 1) truncated to ``[lo, hi]``, ``lo + hi <= 0``, from
    ``p_lo = ndtr(lo)`` and ``p_hi = ndtr(hi)``.

    With the interval on the lower half-line both CDF values are small numbers
    that the float type holds accurately (no loss of tail resolution of the naive
    erf/erfinv route). Exact unless :func:`_trunc_regimes` says otherwise. The
    lowest uniform cell maps to the lower bound, or to the quantile ``eps / 2``
    where the lower bound's CDF is 0 (``lo = -inf``), never to ``-inf``.
    """
    p = p_lo + u * (p_hi - p_lo)
    p = jnp.where(p > 0, p, (jnp.finfo(u.dtype).eps / 2) * (p_hi - p_lo))
    return jnp.clip(jss.ndtri(p), lo, hi)


def _trunc_regimes(p_lo, p_hi):
    """Where :func:`_trunc_standard` loses precision: ``(tail, narrow)``.

    ``tail``: the CDF of the inner bound is so small that the smallest nonzero
    uniform times it underflows (beyond ~11.6 standard deviations in float32,
    ~36.4 in float64). ``narrow``: the interval holds less than 1/8 of the mass
    below its inner bound, so the difference of the two CDFs cancels. Both are
    False for NaN bounds (the padding rows of a batch).
    """
    finfo = jnp.finfo(p_hi.dtype)
    tail = p_hi < finfo.tiny / finfo.eps
    narrow = (p_hi - p_lo) < p_hi * 0.125
    return tail, narrow


# (-1)**k * (2k - 1)!!, k = 12 .. 0: the asymptotic series of the Mills ratio in 1 / x**2.
_MILLS_SERIES = (316234143225.0, -13749310575.0, 654729075.0, -34459425.0, 2027025.0, -135135.0,
                 10395.0, -945.0, 105.0, -15.0, 3.0, -1.0, 1.0)


def _log_mills_ratio(x):
    """``log(Q(x) / phi(x))``, the upper tail over the density, for ``x >= 11``.

    The asymptotic series ``1/x * sum_k (-1)**k (2k-1)!! / x**(2k)``, 13 terms: the
    first omitted one is below 2e-15 at ``x = 11.6`` (the float32 tail threshold of
    :func:`_trunc_regimes`) and below 1e-27 at ``x = 36.4`` (float64's).
    """
    y = 1 / (x * x)
    poly = jnp.zeros_like(y)
    for c in _MILLS_SERIES:
        poly = poly * y + c
    return jnp.log(poly) - jnp.log(x)


def _log_tail_ratio(c, w):
    """``log(Q(c + w) / Q(c))`` for ``c >= 11``, ``w >= 0`` (``-inf`` for ``w = inf``)."""
    log_r = _log_mills_ratio(c + w) - _log_mills_ratio(c) - w * (c + w / 2)
    return jnp.where(jnp.isinf(w), -jnp.inf, log_r)


def _tail_offset(u, c, w, log_r):
    """Offset below the inner bound ``-c`` of N(0, 1) truncated to ``[-(c + w), -c]``.

    For ``c >= 11``; ``log_r = _log_tail_ratio(c, w)``. Inverse CDF in log space
    relative to the inner bound, which never underflows: the mass below
    ``-(c + s)`` over the mass below ``-c`` is
    ``exp(log R(c + s) - log R(c) - s * (c + s / 2))`` (``R``: Mills ratio).
    Solved for ``s`` by Newton's method from the pure Gaussian-tail solution,
    three steps (``h`` is concave in ``s``: after the first step the iterates
    approach the root from above, quadratically). The same orientation as
    :func:`_trunc_standard`: ``u = 0`` is the lower bound (``eps / 2`` when that
    is infinite), ``u -> 1`` the inner bound.
    """
    eps = jnp.finfo(u.dtype).eps
    log_rc = _log_mills_ratio(c)
    r = jnp.exp(log_r)
    # log t, t = u + (1 - u) r: the mass below the sample over the mass below -c,
    # without cancellation either way.
    t = u + (1 - u) * r
    log_t = jnp.where(
        r <= 0.5,
        jnp.log(jnp.where(t > 0, t, eps / 2)),
        jnp.log1p((1 - u) * jnp.expm1(log_r)),
    )
    s = -2 * log_t / (c + jnp.sqrt(c * c - 2 * log_t))
    for _ in range(3):
        log_rs = _log_mills_ratio(c + s)
        h = log_rs - log_rc - s * (c + s / 2) - log_t
        s = jnp.clip(s + h * jnp.exp(log_rs), 0, w)
    return s


_NARROW_TERMS = 13


def _narrow_fraction(u, slope, curve):
    """Inverse CDF of the density ``exp(-slope*t - curve*t**2)`` on ``[0, 1]``, as a
    fraction ``t`` with mass ``1 - u`` in ``[0, t]``.

    For ``|slope| <= ~0.15``, ``0 <= curve <= ~0.02`` (a normal density across a
    narrow interval, ``t`` measured from its inner bound). The mass is a power
    series whose coefficients follow ``(k+1) a[k+1] = -slope a[k] - 2 curve a[k-1]``
    (13 terms; the first omitted one is below 1e-19), inverted by Newton's method
    from the uniform guess, four steps: ``t`` has relative precision.
    """
    coef = [jnp.ones_like(slope), -slope]
    for k in range(1, _NARROW_TERMS - 1):
        coef.append((-slope * coef[k] - 2 * curve * coef[k - 1]) / (k + 1))

    def mass(t):  # the integral of the density over [0, t]
        acc = jnp.zeros_like(t)
        for k in reversed(range(_NARROW_TERMS)):
            acc = acc * t + coef[k] / (k + 1)
        return acc * t

    v = 1 - u
    target = v * mass(jnp.ones_like(slope))
    t = v
    for _ in range(4):
        t = jnp.clip(t - (mass(t) - target) * jnp.exp(t * (slope + curve * t)), 0, 1)
    return t


def _trunc_normal_values(u, mean, std, a, b):
    """N(mean, std**2) truncated to ``[a, b]`` from unit uniforms ``u``, in ``u``'s dtype.

    The interval is reflected onto the lower half-line when most of its mass is
    above the mean, so its upper end ``hi`` is the bound nearer the mean. An
    inverse CDF on ``ndtr``/``ndtri`` (:func:`_trunc_standard`) where that is
    exact; where it loses precision (:func:`_trunc_regimes`: far tails, narrow
    intervals) the sample is an offset from the inner bound, ``x = bound -/+
    offset`` with the offset relative-precise: :func:`_narrow_fraction` on
    narrow intervals (in the tails too), else :func:`_tail_offset`. Those run
    only when some element needs them (``lax.cond``): other draws cost what
    they did and keep their values.
    """
    alpha = (a - mean) / std
    beta = (b - mean) / std
    flip = (alpha + beta) > 0
    lo = jnp.where(flip, -beta, alpha)
    hi = jnp.where(flip, -alpha, beta)
    p_lo, p_hi = jss.ndtr(lo), jss.ndtr(hi)
    tail, narrow = _trunc_regimes(p_lo, p_hi)

    def inverse_cdf(u):
        z = _trunc_standard(u, lo, hi, p_lo, p_hi)
        return mean + std * jnp.where(flip, -z, z)

    def with_offsets(u):
        c = -hi
        w = (b - a) / std  # not hi - lo: that cancels for narrow intervals far out
        # each method gets harmless arguments where it does not apply
        c_tail, w_tail = jnp.where(tail, c, 12.0), jnp.where(tail, w, 1.0)
        log_r = _log_tail_ratio(c_tail, w_tail)
        thin = jnp.where(tail, log_r > np.log(0.875), narrow)
        frac = _narrow_fraction(u, jnp.where(thin, c * w, 0.0), jnp.where(thin, w * w / 2, 0.0))
        offset = jnp.where(thin, (b - a) * frac, std * _tail_offset(u, c_tail, w_tail, log_r))
        return jnp.where(tail | narrow, jnp.where(flip, a + offset, b - offset), inverse_cdf(u))

    x = lax.cond(jnp.any(tail | narrow), with_offsets, inverse_cdf, u)
    # Parameters that degenerate in the compute dtype (std underflows to 0, mean
    # overflows): their limit, the point mass at the bound nearest the mean.
    return jnp.where(jnp.isnan(x), jnp.clip(mean, a, b), x)


# Families whose values are a costly transform of one unit uniform per element.
SPLIT_FAMILIES = ("normal", "trunc_normal")


def _values_from_unit(family, cdt, out_dtype, u, fp):
    """``family``'s values from unit uniforms ``u`` (as :func:`_unit_uniform` makes them)."""
    if family == "normal":
        z = _standard_normal(lambda: u, cdt)
        return (fp(0) + fp(1) * z).astype(out_dtype)
    if family == "trunc_normal":
        mean, std, a, b = fp(0), fp(1), fp(2), fp(3)
        x = _trunc_normal_values(u, mean, std, a, b).astype(out_dtype)
        # torch casts the bounds to the tensor dtype; so do we, after rounding.
        return jnp.clip(x, a.astype(out_dtype), b.astype(out_dtype))
    raise AssertionError(family)


# Bounds under which :func:`_small_quotient` is exact (checked on the host).
SMALL_QUOTIENT_MAX_INDEX = 2**31
SMALL_QUOTIENT_MAX_Q = 2**21
SMALL_QUOTIENT_MAX_DIVISOR = 2**24


def _small_quotient(n_u32, d_u32):
    """``n // d`` for ``n < 2**31``, ``d < 2**24`` and ``n // d < 2**21``, exactly.

    XLA:CPU runs integer division one lane at a time; this is a float32 estimate
    (relative error < 2**-22, so within 2 of the quotient in that range) fixed up
    by three integer corrections each way, all vectorized.
    """
    n = n_u32.astype(np.int32)
    d = d_u32.astype(np.int32)
    q = jnp.floor(n.astype(np.float32) * (np.float32(1) / d.astype(np.float32))).astype(np.int32)
    rem = n - q * d
    for _ in range(3):
        low = rem < 0
        q = jnp.where(low, q - 1, q)
        rem = jnp.where(low, rem + d, rem)
    for _ in range(3):
        high = rem >= d
        q = jnp.where(high, q + 1, q)
        rem = jnp.where(high, rem - d, rem)
    return q.astype(np.uint32)


def _family_values(family, cdt, out_dtype, idx_u32, k1, k2, hi, lo, fp, ip, fast_div=False):
    if family == "uniform":
        u = _unit_uniform(k1, k2, hi, lo, cdt)
        x = _uniform_between(u, fp(0), fp(1)).astype(out_dtype)
        # [a, b) as torch promises, also after rounding to a 16-bit dtype: a value
        # that rounded up to b becomes the largest representable value below it.
        b = fp(1).astype(out_dtype)
        below_b = jnp.nextafter(b, jnp.array(-jnp.inf, out_dtype))
        return jnp.where((x >= b) & (fp(0) < fp(1)), below_b, x)
    if family in SPLIT_FAMILIES:
        return _values_from_unit(family, cdt, out_dtype, _unit_uniform(k1, k2, hi, lo, cdt), fp)
    if family == "constant":
        return jnp.broadcast_to(fp(0), idx_u32.shape).astype(out_dtype)
    if family == "eye":
        # (r, r) is flat r * (cols + 1): one division instead of two.
        stride = ip(0).astype(np.uint32) + _U32(1)
        r = _small_quotient(idx_u32, stride) if fast_div else idx_u32 // stride
        return ((idx_u32 == r * stride) & (r < stride - _U32(1))).astype(out_dtype)
    if family in COMPLEX_PAIR_FAMILIES:
        return _complex_pair_values(family, cdt, out_dtype, k1, k2, hi, lo, fp)
    if family == "dirac":
        # canonical (out, in, *k) flattened; ip = (in, K=prod(k), centre, out_per_group)
        n_in, k, centre, opg = (ip(j).astype(np.uint32) for j in range(4))
        q = idx_u32 // k  # divisions are scalar on CPU: reuse quotients
        spatial = idx_u32 - q * k
        o = q // n_in
        i = q - o * n_in
        return ((spatial == centre) & (i == o % opg)).astype(out_dtype)
    raise AssertionError(family)


def _complex_pair_values(family, cdt, out_dtype, k1, k2, hi, lo, fp):
    """One part of complex values in polar form, on the real view (real, imag, real, ...).

    The element at real-view counters ``(2p, 2p + 1)`` takes its modulus from the
    uniform at ``2p`` and its angle ``2 pi u`` from the uniform at ``2p + 1``;
    counter ``c`` yields the real part (``cos``) when even, the imaginary part
    (``sin``) when odd. So each counter's value depends on its own pair only: any
    slice of the real view is the same slice of the whole. As JAX's
    ``_complex_uniform`` / ``_complex_truncated_normal``:

    * ``complex_disk``: modulus ``sqrt(2 u)``: uniform on the disk of radius
      ``sqrt(2)`` (``E|z|^2 = 1``), times ``scale``;
    * ``complex_trunc_normal``: modulus ``sqrt(-log(1 - t))`` with
      ``t = (1 - exp(-upper^2)) u``: a standard complex normal whose modulus is
      truncated at ``upper``, times ``scale``.
    """
    u_mod = _unit_uniform(k1, k2, hi, lo & _U32(0xFFFFFFFE), cdt)
    u_arg = _unit_uniform(k1, k2, hi, lo | _U32(1), cdt)
    if family == "complex_disk":
        modulus = jnp.sqrt(cdt.type(2) * u_mod)
    else:
        upper = fp(1)
        t = -jnp.expm1(-(upper * upper)) * u_mod
        modulus = jnp.sqrt(-jnp.log1p(-t))
    angle = cdt.type(2 * np.pi) * u_arg
    part = jnp.where((lo & _U32(1)) == 0, jnp.cos(angle), jnp.sin(angle))
    return (fp(0) * modulus * part).astype(out_dtype)


def counter_words(base_lo, base_hi, local):
    """The 64-bit counters ``base + local`` as ``(hi, lo)`` uint32 words (carry included)."""
    lo = base_lo + local
    return base_hi + (lo < base_lo).astype(np.uint32), lo


@functools.cache
def _elementwise_program(family: str, out_dtype: np.dtype, size: int, fast_div: bool = False):
    cdt = param_dtype(family, out_dtype)

    def program(keys, base_lo, base_hi, fparams, iparams):
        _count_trace()
        hi, lo = counter_words(base_lo[0], base_hi[0], lax.iota(np.uint32, size))
        return _family_values(
            family,
            cdt,
            out_dtype,
            lo,  # the flat position (low word) for the index families
            keys[0, 0],
            keys[0, 1],
            hi,
            lo,
            lambda j: fparams[0, j].astype(cdt),
            lambda j: iparams[0, j],
            fast_div,
        )

    return _Program(program)


# From this chunk size on, SPLIT_FAMILIES run as two programs: the hash into unit
# uniforms, then the transform. XLA:CPU fuses the two into one loop that runs
# ~1.4x slower than the two loops apart (register pressure); the extra pass over
# memory is cheap next to that. Values are the same ops on the same numbers.
SPLIT_MIN_SIZE = 4**9


@functools.cache
def _unit_program(cdt: np.dtype, size: int):
    def program(keys, base_lo, base_hi):
        _count_trace()
        hi, lo = counter_words(base_lo[0], base_hi[0], lax.iota(np.uint32, size))
        return _unit_uniform(keys[0, 0], keys[0, 1], hi, lo, cdt)

    return _Program(program)


@functools.cache
def _transform_program(family: str, out_dtype: np.dtype, size: int):
    cdt = param_dtype(family, out_dtype)

    def program(u, fparams):
        _count_trace()
        return _values_from_unit(family, cdt, out_dtype, u, lambda j: fparams[0, j].astype(cdt))

    # The uniforms are dead after this: XLA may write the values over them (same
    # size for 32/64-bit outputs), one fresh buffer fewer per chunk.
    return _Program(program, donate_argnums=(0,) if cdt == out_dtype else ())


def param_dtype(family: str, out_dtype) -> np.dtype:
    out_dtype = np.dtype(out_dtype)
    if FAMILIES[family].random or out_dtype.kind == "f":
        return compute_dtype(out_dtype)
    return out_dtype


def _small_quotient_ok(max_index: int, divisor: int) -> bool:
    return (max_index <= SMALL_QUOTIENT_MAX_INDEX and 0 < divisor < SMALL_QUOTIENT_MAX_DIVISOR
            and max_index // divisor < SMALL_QUOTIENT_MAX_Q)


def chunk_sizes(n: int) -> list[int]:
    """The chunk sizes a flat draw of ``n`` elements is made of."""
    sizes = []
    while n > 0:
        size = next((c for c in CHUNK_SIZES if c >= n), MAX_CHUNK)
        sizes.append(size)
        n -= size
    return sizes


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def run_elementwise(family, out_dtype, n, kd, fparams=(), iparams=(), *, offset=0):
    """Draw ``n`` values of ``family`` in ``out_dtype`` with key data ``kd``.

    Element ``j`` of the result uses counter ``offset + j``. Returns pieces whose
    valid prefixes, concatenated, are the draw. Call under
    :func:`x64_scope` for 64-bit dtypes.
    """
    out_dtype = np.dtype(out_dtype)
    pdt = param_dtype(family, out_dtype)
    fam = FAMILIES[family]
    with np.errstate(over="ignore"):  # a parameter beyond float32 becomes inf, as in the kernel
        fp = np.asarray(fparams).astype(pdt).reshape(1, fam.n_float)
    ip = np.asarray(iparams, dtype=np.int32).reshape(1, fam.n_int)
    keys = kd.reshape(1, 2) if _is_tracer(kd) else np.asarray(kd, np.uint32).reshape(1, 2)
    if _is_tracer(kd):
        # Inside a user's jit: one exact-size program, inlined into theirs.
        prog = _elementwise_program(family, out_dtype, n)
        base = np.array([offset & 0xFFFFFFFF], np.uint32), np.array([offset >> 32], np.uint32)
        return [Piece(prog(keys, *base, fp, ip), n)]
    pieces = []
    done = 0
    for size in chunk_sizes(n):
        pos = offset + done
        base = np.array([pos & 0xFFFFFFFF], np.uint32), np.array([pos >> 32], np.uint32)
        if family in SPLIT_FAMILIES and size >= SPLIT_MIN_SIZE:
            u = _unit_program(pdt, size)(keys, *base)
            out = _transform_program(family, out_dtype, size)(u, fp)
        else:
            fast = family == "eye" and _small_quotient_ok(pos + size, int(ip[0, 0]) + 1)
            prog = _elementwise_program(family, out_dtype, size, fast)
            out = prog(keys, *base, fp, ip)
        valid = min(size, n - done)
        pieces.append(Piece(out, valid))
        done += valid
    return pieces


def _concat_prefix(pieces, n):
    arrays = [p.array[: p.valid] if p.valid != p.array.shape[0] else p.array for p in pieces]
    flat = arrays[0] if len(arrays) == 1 else jnp.concatenate(arrays)
    return flat[:n]


def _haar_householder(x):
    """A Haar-random ``(m, n)`` matrix with orthonormal columns from a normal draw ``x`` (m >= n).

    Householder QR of a Gaussian matrix reflects, at step ``k``, a vector that is
    again standard normal in ``R^(m-k)`` and independent of the earlier steps
    (rotation invariance). So the reflectors can be built straight from the
    lower trapezoid of ``x`` (Stewart 1980) - column ``k``, rows ``k..m-1`` -
    with LAPACK's conventions (``beta = -sign(alpha) * norm``, ``tau = (beta -
    alpha) / beta``, ``v = [1, x[k+1:] / (alpha - beta)]``), and ``Q`` formed by
    one ``householder_product`` (LAPACK ``orgqr``: half the work of ``geqrf`` +
    ``orgqr``). Column ``k`` is multiplied by ``sign(R[k, k])`` (Mezzadri 2007),
    as ``torch.nn.init.orthogonal_`` does, so the result is exactly Haar
    distributed; orthonormal to rounding.
    """
    m, n = x.shape
    below = lax.broadcasted_iota(np.int32, (m, n), 0) > lax.broadcasted_iota(np.int32, (m, n), 1)
    alpha = jnp.diagonal(x)
    tail = jnp.where(below, x, jnp.zeros((), x.dtype))
    tail_norm2 = jnp.sum(tail * tail, axis=0)
    one = jnp.ones((), x.dtype)
    beta = -jnp.where(alpha >= 0, one, -one) * jnp.sqrt(alpha * alpha + tail_norm2)
    trivial = tail_norm2 == 0  # a length-1 (or zero) tail: no reflection, R[k, k] = alpha
    safe_beta = jnp.where(trivial, one, beta)
    tau = jnp.where(trivial, jnp.zeros((), x.dtype), (beta - alpha) / safe_beta)
    scale = jnp.where(trivial, jnp.zeros((), x.dtype), one / jnp.where(trivial, one, alpha - beta))
    q = lax.linalg.householder_product(tail * scale[None, :], tau)
    r_diag = jnp.where(trivial, alpha, beta)
    return q * jnp.where(r_diag < 0, -one, one)[None, :]


def _qr_haar(x):
    """The same distribution by ``jnp.linalg.qr`` (the fallback): ``Q * sign(diag(R))``."""
    q, r = jnp.linalg.qr(x)
    return q * jnp.sign(jnp.diagonal(r))[None, :]


@functools.cache
def _orthogonal_program(rows: int, cols: int, out_dtype: np.dtype, valids: tuple[int, ...],
                        method: str = "householder"):
    haar = _haar_householder if method == "householder" else _qr_haar

    def program(gain, *chunks):
        _count_trace()
        flat = _concat_prefix([Piece(c, v) for c, v in zip(chunks, valids, strict=True)], rows * cols)
        a = flat.reshape(rows, cols)
        if rows < cols:
            a = a.T
        q = haar(a)
        if rows < cols:
            q = q.T
        return (q * gain.astype(q.dtype)).astype(out_dtype)

    return _Program(program)


_orthogonal_method = "householder"


def run_orthogonal(kd, rows, cols, out_dtype, gain):
    """A Haar-random matrix with orthonormal rows or columns, times ``gain``.

    A normal ``(rows, cols)`` draw, transposed when ``rows < cols``, gives the
    Householder reflectors of :func:`_haar_householder` (falling back to QR of
    the draw where ``householder_product`` is unavailable); columns are
    sign-corrected by ``sign(diag(R))`` (Mezzadri 2007), as
    ``torch.nn.init.orthogonal_``. 16-bit dtypes are computed in float32.
    """
    global _orthogonal_method
    out_dtype = np.dtype(out_dtype)
    cdt = compute_dtype(out_dtype)
    normal = run_elementwise("normal", cdt, rows * cols, kd, (0.0, 1.0))
    valids = tuple(p.valid for p in normal)
    args = (np.asarray(gain, cdt), *(p.array for p in normal))
    if _orthogonal_method == "householder":
        try:
            out = _orthogonal_program(rows, cols, out_dtype, valids, "householder")(*args)
        except Exception:  # noqa: BLE001 - e.g. a backend without orgqr: use QR from now on
            _orthogonal_method = "qr"
    if _orthogonal_method == "qr":
        out = _orthogonal_program(rows, cols, out_dtype, valids, "qr")(*args)
    return [Piece(out.reshape(-1), rows * cols)]


def selection_mask(u, zeros):
    """Which entries of each column are zeroed: exactly ``zeros`` rows per column.

    Selection sampling (Knuth's Algorithm S), row by row and vectorized over
    columns: row ``i`` is chosen with probability ``need / remaining``, from the
    unit uniforms ``u`` (``(rows, cols)``). Every subset is equally likely; no sort.
    """
    rows, cols = u.shape

    def step(need, xs):
        ui, remaining = xs
        chosen = (need >= remaining) | (ui * remaining.astype(u.dtype) < need.astype(u.dtype))
        chosen = chosen & (need > 0)
        return need - chosen.astype(need.dtype), chosen

    remaining = jnp.arange(rows, 0, -1, dtype=np.int32)
    _, mask = lax.scan(step, jnp.full((cols,), zeros, dtype=np.int32), (u, remaining))
    return mask


@functools.cache
def _sparse_program(rows: int, cols: int, out_dtype: np.dtype, vvalids, svalids):
    def program(zeros, *chunks):
        _count_trace()
        nv = len(vvalids)
        vals = _concat_prefix([Piece(c, v) for c, v in zip(chunks[:nv], vvalids, strict=True)], rows * cols)
        sel = _concat_prefix([Piece(c, v) for c, v in zip(chunks[nv:], svalids, strict=True)], rows * cols)
        vals = vals.reshape(rows, cols)
        mask = selection_mask(sel.reshape(rows, cols), zeros)
        return jnp.where(mask, jnp.zeros((), vals.dtype), vals).astype(out_dtype)

    return _Program(program)


@functools.cache
def _sparse_fused_program(rows: int, cols: int, out_dtype: np.dtype):
    """:func:`_sparse_program`'s values, with the draws done inside the row scan.

    Row ``i`` hashes its own counters (values ``i*cols + c``, selection
    ``n + i*cols + c``) in the scan step, so no ``(rows, cols)`` intermediate is
    written or re-read; the arithmetic is that of :func:`run_elementwise`, so the
    result is bit-identical. Needs ``2 * rows * cols <= 2**32`` (no counter carry).
    """
    cdt = compute_dtype(out_dtype)
    n = rows * cols

    def program(kd, zeros, fparams):
        _count_trace()
        k1, k2 = kd[0], kd[1]
        lo = lax.iota(np.uint32, n).reshape(rows, cols)
        hi = jnp.zeros((rows, cols), np.uint32)
        mask = selection_mask(_unit_uniform(k1, k2, hi, lo + _U32(n), cdt), zeros)
        z = _standard_normal(lambda: _unit_uniform(k1, k2, hi, lo, cdt), cdt)
        vals = fparams[0] + fparams[1] * z
        return jnp.where(mask, jnp.zeros((), cdt), vals).astype(out_dtype).reshape(-1)

    return _Program(program)


def run_sparse(kd, rows, cols, out_dtype, zeros, std):
    """Normal(0, std) values with exactly ``zeros`` zeros in every column.

    The values use counters ``[0, n)``; the zero pattern uses uniforms at
    counters ``[n, 2n)`` of the same key, consumed by selection sampling
    (Knuth's Algorithm S) row by row.
    """
    out_dtype = np.dtype(out_dtype)
    cdt = compute_dtype(out_dtype)
    n = rows * cols
    if 2 * n <= 2**32:
        kd_arg = kd.reshape(2) if _is_tracer(kd) else np.asarray(kd, np.uint32).reshape(2)
        fp = np.asarray((0.0, std), dtype=cdt)
        out = _sparse_fused_program(rows, cols, out_dtype)(kd_arg, np.int32(zeros), fp)
        return [Piece(out, n)]
    vals = run_elementwise("normal", cdt, n, kd, (0.0, std))
    sel = run_elementwise("uniform", cdt, n, kd, (0.0, 1.0), offset=n)
    args = (rows, cols, out_dtype, tuple(p.valid for p in vals), tuple(p.valid for p in sel))
    out = _sparse_program(*args)(np.int32(zeros), *(p.array for p in vals), *(p.array for p in sel))
    return [Piece(out.reshape(-1), n)]


@functools.cache
def _unitary_program(rows: int, cols: int, out_dtype: np.dtype, valids: tuple[int, ...]):
    def program(gain, *chunks):
        _count_trace()
        parts = _concat_prefix([Piece(c, v) for c, v in zip(chunks, valids, strict=True)],
                               2 * rows * cols).reshape(rows, cols, 2)
        a = lax.complex(parts[..., 0], parts[..., 1])
        if rows < cols:
            a = a.T
        q = _qr_haar(a)  # complex: columns times sign(R[k, k]) = R[k, k] / |R[k, k]|
        if rows < cols:
            q = q.T
        q = q * gain.astype(q.dtype)
        return jnp.stack([q.real, q.imag], axis=-1).astype(out_dtype).reshape(-1)

    return _Program(program)


def run_unitary(kd, rows, cols, out_dtype, gain):
    """A Haar-random complex matrix with orthonormal rows or columns, times ``gain``,
    as its real view ``(rows, cols, 2)`` in ``out_dtype`` (float32 or float64).

    A complex normal ``(rows, cols)`` draw (the real view drawn as normals),
    transposed when ``rows < cols``, is QR-factorized; column ``k`` of ``Q`` is
    multiplied by the phase of ``R[k, k]`` (Mezzadri 2007), which makes ``Q``
    exactly Haar distributed on the unitary group, as ``jax.random.orthogonal``
    does for complex dtypes.
    """
    out_dtype = np.dtype(out_dtype)
    normal = run_elementwise("normal", out_dtype, 2 * rows * cols, kd, (0.0, 1.0))
    valids = tuple(p.valid for p in normal)
    out = _unitary_program(rows, cols, out_dtype, valids)(np.asarray(gain, out_dtype),
                                                          *(p.array for p in normal))
    return [Piece(out, 2 * rows * cols)]


@functools.cache
def _sparse_complex_program(rows: int, cols: int, out_dtype: np.dtype, vvalids, svalids):
    def program(zeros, *chunks):
        _count_trace()
        nv, n = len(vvalids), rows * cols
        vals = _concat_prefix([Piece(c, v) for c, v in zip(chunks[:nv], vvalids, strict=True)], 2 * n)
        sel = _concat_prefix([Piece(c, v) for c, v in zip(chunks[nv:], svalids, strict=True)], n)
        mask = selection_mask(sel.reshape(rows, cols), zeros)[..., None]
        vals = vals.reshape(rows, cols, 2)
        return jnp.where(mask, jnp.zeros((), vals.dtype), vals).astype(out_dtype).reshape(-1)

    return _Program(program)


def run_sparse_complex(kd, rows, cols, out_dtype, zeros, std):
    """:func:`run_sparse` for complex values, as their real view ``(rows, cols, 2)``.

    The values are a complex normal with ``E|w|^2 = std^2`` (each part
    ``N(0, std^2 / 2)``, real-view counters ``[0, 2n)``); the zero pattern uses
    uniforms at counters ``[2n, 3n)``, one per element, and zeroes whole elements.
    """
    out_dtype = np.dtype(out_dtype)
    n = rows * cols
    vals = run_elementwise("normal", out_dtype, 2 * n, kd, (0.0, std / np.sqrt(2)))
    sel = run_elementwise("uniform", out_dtype, n, kd, (0.0, 1.0), offset=2 * n)
    args = (rows, cols, out_dtype, tuple(p.valid for p in vals), tuple(p.valid for p in sel))
    out = _sparse_complex_program(*args)(np.int32(zeros), *(p.array for p in vals),
                                         *(p.array for p in sel))
    return [Piece(out, 2 * n)]


def self_check() -> bool:
    """Check the unrolled threefry against ``jax.random.bits``; fall back if they differ.

    Runs once per process on first use. Returns True when xinit's own hash is used.
    """
    global _use_own_threefry
    key = jax.random.key(20240531)
    n = 1000
    kd = np.asarray(jax.random.key_data(key))
    lo = np.arange(2**32 - 500, 2**32 + 500, dtype=np.uint64)  # crosses the hi-word carry
    hi32, lo32 = (lo >> 32).astype(np.uint32), (lo & 0xFFFFFFFF).astype(np.uint32)
    # xinit's hash in numpy (the same uint32 arithmetic, no compilation); JAX's
    # primitive and jax.random.bits in one compiled program (a cold start pays
    # for one compilation, not three).
    with np.errstate(over="ignore"):
        ours = threefry2x32(kd[0], kd[1], hi32, lo32)
        mine = threefry2x32(kd[0], kd[1], np.zeros(n, np.uint32), np.arange(n, dtype=np.uint32))
    from jax.extend.random import threefry2x32_p

    def reference(key, k, hi, lo):
        return tuple(threefry2x32_p.bind(k[0], k[1], hi, lo)), jax.random.bits(key, (n,), np.uint32)

    ref, bits = jax.jit(reference)(key, kd, hi32, lo32)
    ok = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, ref, strict=True))
    ok = ok and bool((np.asarray(bits) == (mine[0] ^ mine[1])).all())
    if not ok:
        warnings.warn(
            "xinit's threefry does not match this JAX release's jax.random bits; "
            "falling back to jax.extend.random.threefry2x32_p (slower on CPU).",
            RuntimeWarning,
            stacklevel=2,
        )
        _use_own_threefry = False
        _elementwise_program.cache_clear()
    return ok


def _check_marker():
    """Where a passed self-check is remembered: the persistent compilation cache, if on.

    The result depends only on the versions of xinit, jax and jaxlib and on the
    backend, which the file name carries; the cache directory is trusted by
    JAX already (it holds executables). ``None`` when no cache is configured.
    """
    directory = jax.config.jax_compilation_cache_dir
    if not directory:
        return None
    import jaxlib

    from xinit import __version__

    name = f"xinit-{__version__}-selfcheck-jax{jax.__version__}-jaxlib{jaxlib.__version__}"
    return Path(directory) / f"{name}-{_default_platform()}.ok"


@functools.cache
def ensure_checked() -> bool:
    """Run :func:`self_check` once per process, eagerly even when first reached
    inside a user's ``jit`` (e.g. ``jax.jit(model.init)``).

    With a persistent compilation cache on (see
    :func:`xinit.core.cache.enable_compilation_cache`), a pass is remembered
    there, so later processes skip the check's compilation (~0.1 s of a cold start).
    """
    marker = _check_marker()
    if marker is not None and marker.exists():
        return True
    with jax.ensure_compile_time_eval():
        ok = self_check()
    if ok and marker is not None:
        try:
            marker.touch()
        except OSError:  # a read-only cache: check again next time
            pass
    return ok

