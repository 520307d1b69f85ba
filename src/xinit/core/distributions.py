"""The distributions: how each initializer's values are made from unit uniforms or indices.

Everything here is pure ``jax.numpy`` math on arrays (no compilation, no
chunking, no keys): :mod:`xinit.core.programs` compiles it, and
:mod:`xinit.core.engine` decides what to draw. A newcomer looking for "how is a
truncated normal sampled" or "how is the orthogonal matrix made" reads this file.

*Elementwise* families compute each element from its own flat index alone:

- ``uniform`` (low, high): the unit uniform mapped affinely, as ``jax.random.uniform``,
  kept strictly below ``high`` after rounding (``[a, b)``, as torch promises);
- ``normal`` (mean, std): ``sqrt(2) * erfinv(2u - 1)``, as ``jax.random.normal``;
- ``trunc_normal`` (mean, std, a, b): inverse-CDF sampling, ``a``/``b`` absolute bounds,
  exact also in the far tails and on narrow intervals (:func:`trunc_normal_values`);
- ``constant`` (value,), ``eye`` (cols,) and ``dirac`` (in, K, centre, out_per_group):
  no randomness, a function of the index;
- ``complex_disk`` (scale,) and ``complex_trunc_normal`` (scale, upper): complex
  values in polar form, drawn on their real view (:func:`complex_pair_values`).

*Structured* families need more than one element at a time: ``orthogonal`` (a
Haar-random matrix from a Gaussian one, :func:`haar_householder`), its complex
counterpart ``unitary`` (:func:`unitary`) and ``sparse`` (exactly ``zeros`` zeros
per column by selection sampling, :func:`select_zeros`).

float16/bfloat16 values are computed in float32 from 32 random bits and rounded
once at the end (as torch does), so their distribution is the float32 one
rounded, not the coarse 16-bit-bits draw of ``jax.random``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy import special as jss

__all__ = [
    "FAMILIES",
    "SPLIT_FAMILIES",
    "compute_dtype",
    "param_dtype",
    "program_fparams",
    "uniform_cap",
    "uniform_between",
    "standard_normal",
    "trunc_normal_values",
    "values_from_unit",
    "family_values",
    "complex_pair_values",
    "haar_householder",
    "qr_haar",
    "unitary",
    "select_zeros",
]

_U32 = np.uint32


class Family(NamedTuple):
    n_float: int  # float parameters per tensor
    n_int: int  # int parameters per tensor
    random: bool  # needs random bits (and a floating dtype)


FAMILIES = {
    "uniform": Family(2, 0, True),  # (low, high)
    "normal": Family(2, 0, True),  # (mean, std)
    "trunc_normal": Family(4, 0, True),  # (mean, std, a, b), absolute bounds
    "constant": Family(1, 0, False),  # (value,)
    "eye": Family(0, 1, False),  # (cols,)
    "dirac": Family(0, 4, False),  # (in, prod(kernel), centre, out_per_group)
    # complex values drawn on their real view (see complex_pair_values)
    "complex_disk": Family(1, 0, True),  # (scale,): uniform on the disk of radius scale*sqrt(2)
    "complex_trunc_normal": Family(2, 0, True),  # (scale, upper): modulus truncated at upper
}
COMPLEX_PAIR_FAMILIES = ("complex_disk", "complex_trunc_normal")

# Families whose values are a costly transform of one unit uniform per element:
# large chunks of them run as two programs (hash, then transform; see programs.py).
SPLIT_FAMILIES = ("normal", "trunc_normal")


def compute_dtype(dtype) -> np.dtype:
    """The dtype a random family computes in: float32 for 16-bit floats, else the dtype."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype


def param_dtype(family: str, out_dtype) -> np.dtype:
    """The dtype ``family``'s parameters are passed (and computed) in for ``out_dtype``:
    the compute dtype for random families and floats, else ``out_dtype`` itself (a
    complex fill's value is complex: ``constant(1 + 2j)``, as ``jnp.full``)."""
    out_dtype = np.dtype(out_dtype)
    if FAMILIES[family].random or out_dtype.kind == "f":
        return compute_dtype(out_dtype)
    return out_dtype


# ---------------------------------------------------------------- uniform


def uniform_between(u, low, high):
    """``jax.random.uniform``'s affine map of unit uniforms ``u``, with its clamp at ``low``."""
    return lax.max(low, u * (high - low) + low)


def uniform_cap(low: np.ndarray, high: np.ndarray, out_dtype) -> np.ndarray:
    """What a uniform draw that rounded up to ``high`` becomes (host numpy, per tensor).

    ``[a, b)`` as torch promises, also after rounding to a 16-bit dtype: the
    largest ``out_dtype`` value below ``high``; ``high`` itself when ``low == high``
    (every value is then ``low``). Returned in the dtype of ``high``.
    """
    out_dtype = np.dtype(out_dtype)
    b = high.astype(out_dtype)
    below = np.nextafter(b, np.array(-np.inf, out_dtype))
    return np.where(low < high, below, b).astype(high.dtype)


def program_fparams(family: str, fparams: np.ndarray, out_dtype) -> np.ndarray:
    """The float parameters a compiled program receives per row: the family's own,
    plus (uniform) the :func:`uniform_cap` column, computed once on the host."""
    if family == "uniform":
        return np.concatenate([fparams, uniform_cap(fparams[:, 0], fparams[:, 1], out_dtype)[:, None]],
                              axis=1)
    return fparams


# ---------------------------------------------------------------- normal families


def standard_normal(u, cdt):
    """N(0, 1) from unit uniforms ``u``, exactly as ``jax.random.normal``."""
    lo = np.nextafter(np.array(-1.0, cdt), np.array(0.0, cdt))
    v = uniform_between(u, lo.astype(cdt), cdt.type(1.0))
    return cdt.type(np.sqrt(2)) * lax.erf_inv(v)


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


def trunc_normal_values(u, mean, std, a, b, out_dtype=None):
    """N(mean, std**2) truncated to ``[a, b]`` from unit uniforms ``u``, in ``u``'s dtype
    (or cast to ``out_dtype`` and clipped to the bounds cast to it, as torch does).

    The interval is reflected onto the lower half-line when most of its mass is
    above the mean, so its upper end ``hi`` is the bound nearer the mean. An
    inverse CDF on ``ndtr``/``ndtri`` (:func:`_trunc_standard`) where that is
    exact; where it loses precision (:func:`_trunc_regimes`: far tails, narrow
    intervals) the sample is an offset from the inner bound, ``x = bound -/+
    offset`` with the offset relative-precise: :func:`_narrow_fraction` on
    narrow intervals (in the tails too), else :func:`_tail_offset`. Those run
    only when some element needs them (``lax.cond``): other draws cost what
    they did and keep their values. Everything after the sample (the limits of
    degenerate parameters, the cast, the clip) is inside each branch, so that a
    branch is one pass over the values.
    """
    alpha = (a - mean) / std
    beta = (b - mean) / std
    flip = (alpha + beta) > 0
    lo = jnp.where(flip, -beta, alpha)
    hi = jnp.where(flip, -alpha, beta)
    # once per tensor (or row of tensors), not per element: XLA would otherwise fuse
    # the two CDF evaluations into the element loop (same values, ~1.5x the time)
    p_lo, p_hi = lax.optimization_barrier((jss.ndtr(lo), jss.ndtr(hi)))
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

    def finished(x):
        # Parameters that degenerate in the compute dtype (std underflows to 0, mean
        # overflows): their limit, the point mass at the bound nearest the mean.
        x = jnp.where(jnp.isnan(x), jnp.clip(mean, a, b), x)
        if out_dtype is None:
            return x
        # torch casts the bounds to the tensor dtype; so do we, after rounding.
        return jnp.clip(x.astype(out_dtype), a.astype(out_dtype), b.astype(out_dtype))

    return lax.cond(jnp.any(tail | narrow), lambda u: finished(with_offsets(u)),
                    lambda u: finished(inverse_cdf(u)), u)


def values_from_unit(family, cdt, out_dtype, u, fp):
    """The values of a :data:`SPLIT_FAMILIES` family from unit uniforms ``u``.

    ``fp(j)`` is float parameter ``j`` in ``cdt`` (broadcastable against ``u``).
    """
    if family == "normal":
        z = standard_normal(u, cdt)
        return (fp(0) + fp(1) * z).astype(out_dtype)
    if family == "trunc_normal":
        return trunc_normal_values(u, fp(0), fp(1), fp(2), fp(3), np.dtype(out_dtype))
    raise AssertionError(family)


# ---------------------------------------------------------------- index families

# Bounds under which :func:`small_quotient` is exact (checked on the host).
SMALL_QUOTIENT_MAX_INDEX = 2**31
SMALL_QUOTIENT_MAX_Q = 2**21
SMALL_QUOTIENT_MAX_DIVISOR = 2**24


def small_quotient(n_u32, d_u32):
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


def small_quotient_ok(max_index: int, divisor: int) -> bool:
    """Whether :func:`small_quotient` is exact for indices below ``max_index``."""
    return (max_index <= SMALL_QUOTIENT_MAX_INDEX and 0 < divisor < SMALL_QUOTIENT_MAX_DIVISOR
            and max_index // divisor < SMALL_QUOTIENT_MAX_Q)


def family_values(family, cdt, out_dtype, idx_u32, unit, fp, ip, fast_div=False):
    """Elementwise ``family``'s values in ``out_dtype``.

    ``idx_u32``: each element's flat index (its counter's low word); ``unit(lo=None)``:
    the unit uniforms of the elements' counters, or of the counters with low word
    ``lo`` (called only by random families); ``fp(j)``/``ip(j)``: float/int
    parameter ``j``, broadcastable against the index (for uniform ``fp(2)`` is the
    :func:`uniform_cap`); ``fast_div``: eye may use :func:`small_quotient` (the
    caller checked :func:`small_quotient_ok`).
    """
    if family == "uniform":
        x = uniform_between(unit(), fp(0), fp(1)).astype(out_dtype)
        return jnp.where(x >= fp(1).astype(out_dtype), fp(2).astype(out_dtype), x)
    if family in SPLIT_FAMILIES:
        return values_from_unit(family, cdt, out_dtype, unit(), fp)
    if family in COMPLEX_PAIR_FAMILIES:
        return complex_pair_values(family, cdt, out_dtype, idx_u32, unit, fp)
    if family == "constant":
        return jnp.broadcast_to(fp(0), idx_u32.shape).astype(out_dtype)
    if family == "eye":
        # (r, r) is flat r * (cols + 1): one division instead of two.
        stride = ip(0).astype(np.uint32) + _U32(1)
        r = small_quotient(idx_u32, stride) if fast_div else idx_u32 // stride
        return ((idx_u32 == r * stride) & (r < stride - _U32(1))).astype(out_dtype)
    if family == "dirac":
        # canonical (out, in, *k) flattened; ip = (in, K=prod(k), centre, out_per_group)
        n_in, k, centre, opg = (ip(j).astype(np.uint32) for j in range(4))
        q = idx_u32 // k  # divisions are scalar on CPU: reuse quotients
        spatial = idx_u32 - q * k
        o = q // n_in
        i = q - o * n_in
        return ((spatial == centre) & (i == o % opg)).astype(out_dtype)
    raise AssertionError(family)


def complex_pair_values(family, cdt, out_dtype, lo, unit, fp):
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
    u_mod = unit(lo & _U32(0xFFFFFFFE))
    u_arg = unit(lo | _U32(1))
    if family == "complex_disk":
        modulus = jnp.sqrt(cdt.type(2) * u_mod)
    else:
        upper = fp(1)
        t = -jnp.expm1(-(upper * upper)) * u_mod
        modulus = jnp.sqrt(-jnp.log1p(-t))
    angle = cdt.type(2 * np.pi) * u_arg
    part = jnp.where((lo & _U32(1)) == 0, jnp.cos(angle), jnp.sin(angle))
    return (fp(0) * modulus * part).astype(out_dtype)


# ---------------------------------------------------------------- orthogonal


def haar_householder(x):
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


def qr_haar(x):
    """The same distribution by ``jnp.linalg.qr`` (the fallback): ``Q * sign(diag(R))``."""
    q, r = jnp.linalg.qr(x)
    return q * jnp.sign(jnp.diagonal(r))[None, :]


def orthogonal(normal, rows: int, cols: int, gain, method: str = "householder"):
    """A Haar-random ``(rows, cols)`` matrix with orthonormal rows or columns, times ``gain``,
    from a standard normal ``(rows, cols)`` draw (transposed when ``rows < cols``)."""
    haar = haar_householder if method == "householder" else qr_haar
    a = normal.reshape(rows, cols)
    if rows < cols:
        a = a.T
    q = haar(a)
    if rows < cols:
        q = q.T
    return q * gain.astype(q.dtype)


def unitary(parts, rows: int, cols: int, gain):
    """A Haar-random complex ``(rows, cols)`` matrix with orthonormal rows or columns,
    times ``gain``, as its real view ``(rows, cols, 2)``, from standard normal parts.

    The complex normal matrix (transposed when ``rows < cols``) is QR-factorized;
    column ``k`` of ``Q`` is multiplied by the phase of ``R[k, k]`` (Mezzadri 2007),
    which makes ``Q`` exactly Haar distributed on the unitary group, as
    ``jax.random.orthogonal`` does for complex dtypes.
    """
    parts = parts.reshape(rows, cols, 2)
    a = lax.complex(parts[..., 0], parts[..., 1])
    if rows < cols:
        a = a.T
    q = qr_haar(a)  # complex: columns times sign(R[k, k]) = R[k, k] / |R[k, k]|
    if rows < cols:
        q = q.T
    q = q * gain.astype(q.dtype)
    return jnp.stack([q.real, q.imag], axis=-1)


# ---------------------------------------------------------------- sparse


def select_zeros(u, zeros, total_rows: int):
    """Which entries of each column are zero: exactly ``zeros`` of ``total_rows`` per column.

    Selection sampling (Knuth's Algorithm S), row by row and vectorized over
    columns: row ``i`` is chosen with probability need/remaining, from the unit
    uniforms ``u``. Each subset is equally likely, no sort. Rows after ``i``
    never change row ``i``'s choice, so ``u`` may hold only the first rows (the
    mask of those rows is returned), and each column only depends on its own
    uniforms.
    """
    rows, cols = u.shape

    def step(need, xs):
        ui, remaining = xs
        chosen = (need >= remaining) | (ui * remaining.astype(ui.dtype) < need.astype(ui.dtype))
        chosen = chosen & (need > 0)
        return need - chosen.astype(need.dtype), chosen

    remaining = jnp.arange(total_rows, total_rows - rows, -1, dtype=np.int32)
    _, mask = lax.scan(step, jnp.full((cols,), zeros, dtype=np.int32), (u, remaining))
    return mask
