r"""``jax.nn.initializers``, with JAX's names, signatures, semantics and errors.

Every name ``jax.nn.initializers`` exports (and flax's ``zeros_init`` /
``ones_init``), so ``import xinit.flax as initializers`` is a drop-in: the same
arguments, the same distributions (real and complex), dtypes read as JAX reads
them, results placed as ``out_sharding`` and the ambient mesh say, and the same
exception types for the same bad calls. The values are not JAX's bit for bit:
xinit draws with its own canonical, chunked kernels (and the same ones for
``xinit.torch``). Each factory translates its arguments into a core spec; no
distribution math lives here.

Where xinit differs, on purpose:

* arguments are validated when the initializer is built, not when it is first
  called (``variance_scaling(1.0, "fan_avgg", "normal")`` raises at once, with
  JAX's message; a negative ``scale`` raises instead of giving NaN);
* ``orthogonal`` and ``delta_orthogonal`` also draw float16/bfloat16 (computed
  in float32; JAX's QR raises ``NotImplementedError`` on the CPU);
* a key may also be an int seed; ``constant`` takes a scalar value only;
* complex ``variance_scaling`` honours ``out_sharding`` for every distribution
  (JAX drops it for complex ``uniform`` and ``truncated_normal``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from xinit.core import specs
from xinit.core.engine import x64_scope
from xinit.core.errors import AxisError, ShapeError, ZeroSizeError
from xinit.core.layout import Layout, as_shape

from ._initializers import IDENTITY, JaxInitializer, check_dtype, place

__all__ = [
    "constant",
    "delta_orthogonal",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "orthogonal",
    "truncated_normal",
    "uniform",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
    "zeros_init",
    "ones_init",
    "DeltaOrthogonal",
]

Axes = int | Sequence[int]


def _number(name: str, arg: str, value) -> float:
    """A real argument as a Python float (JAX also takes concrete 0-d arrays)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: {arg} must be a real number; got {value!r}") from None


def _jax(name: str, spec: specs.Spec, dtype, args, *, layout: Layout = IDENTITY,
         **flags) -> JaxInitializer:
    return JaxInitializer(spec, layout, check_dtype(dtype), name, args=tuple(args), **flags)


# ------------------------------------------------------------------ fills


zeros = JaxInitializer(specs.Zeros(), IDENTITY, None, "zeros")
"""``jax.nn.initializers.zeros``: an initializer (not a factory) filling with 0.

``zeros(key, shape, dtype=None, out_sharding=None)``; the key is ignored. Any dtype
``jnp.zeros`` takes among bool, integers, floats and complex; ``linen``'s
``bias_init=zeros`` and :func:`zeros_init` return it."""

ones = JaxInitializer(specs.Ones(), IDENTITY, None, "ones")
"""``jax.nn.initializers.ones``: an initializer (not a factory) filling with 1 (the key is ignored)."""


def zeros_init() -> JaxInitializer:
    """``flax.linen.initializers.zeros_init``: returns :data:`zeros`.

    >>> zeros_init()(jax.random.key(0), (2,), jnp.int32).tolist()
    [0, 0]
    """
    return zeros


def ones_init() -> JaxInitializer:
    """``flax.linen.initializers.ones_init``: returns :data:`ones`.

    >>> ones_init()(jax.random.key(0), (2,)).tolist()
    [1.0, 1.0]
    """
    return ones


def constant(value, dtype=None) -> JaxInitializer:
    """``jax.nn.initializers.constant``: every element ``value`` (the key is ignored).

    ``value`` is a scalar (bool, int, float, complex, or a 0-d array); it is cast
    to the call's dtype as ``jnp.full`` casts it (``constant(0.7)`` in int32 is 0).
    JAX also broadcasts an array ``value``; xinit does not (a ``TypeError``).

    >>> constant(-7)(jax.random.key(0), (2, 3), jnp.float32).tolist()
    [[-7.0, -7.0, -7.0], [-7.0, -7.0, -7.0]]
    """
    if np.ndim(value) != 0:
        raise TypeError(
            f"constant: value must be a scalar (every element gets it); got an array of shape "
            f"{np.shape(value)}"
        )
    scalar = value.item() if hasattr(value, "item") else value
    if not isinstance(scalar, (bool, int, float, complex)):
        raise TypeError(f"constant: value must be a number; got {value!r}")
    return _jax("constant", specs.Constant(scalar), dtype, [("value", scalar)])


# ------------------------------------------------------------ plain draws


def uniform(scale=1e-2, dtype=None) -> JaxInitializer:
    r"""``jax.nn.initializers.uniform``: :math:`\mathcal{U}[0, \text{scale})`.

    Real floating dtypes only (``ValueError`` for complex, integer or bool ones,
    as JAX). A negative ``scale`` gives :math:`\mathcal{U}(\text{scale}, 0]`, as
    JAX's ``uniform(key) * scale``. torch's ``U(a, b)`` is
    :func:`xinit.flax.torch_init.uniform`.

    >>> w = uniform(10.0)(jax.random.key(0), (2, 3))
    >>> bool((w >= 0).all() and (w < 10).all())
    True
    """
    s = _number("uniform", "scale", scale)
    spec = specs.Uniform(0.0, s) if s >= 0 else specs.Uniform(s, 0.0)
    return _jax("uniform", spec, dtype, [("scale", scale)], real_only=True)


def normal(stddev=1e-2, dtype=None) -> JaxInitializer:
    r"""``jax.nn.initializers.normal``: :math:`\mathcal{N}(0, \text{stddev}^2)`.

    Complex dtypes draw a complex normal with :math:`E|w|^2 = \text{stddev}^2`
    (each part :math:`\mathcal{N}(0, \text{stddev}^2/2)`), as JAX. torch's
    ``normal(mean, std)`` is :func:`xinit.flax.torch_init.normal`.

    >>> normal(0.02)(jax.random.key(0), (3, 4)).dtype
    dtype('float32')
    """
    s = _number("normal", "stddev", stddev)
    return _jax("normal", specs.Normal(0.0, abs(s)), dtype, [("stddev", stddev)])


def truncated_normal(stddev=1e-2, dtype=None, lower=-2.0, upper=2.0) -> JaxInitializer:
    r"""``jax.nn.initializers.truncated_normal``: ``stddev`` times :math:`\mathcal{N}(0, 1)`
    truncated to ``[lower, upper]``.

    The bounds are in units of ``stddev`` and there is no variance correction
    (``truncated_normal(1.0)`` has standard deviation 0.88), as JAX. Floating
    dtypes only. torch's absolute-bound version is
    :func:`xinit.flax.torch_init.trunc_normal`.

    Raises:
        BoundsError (``ValueError``): ``lower > upper``.

    >>> w = truncated_normal(0.02)(jax.random.key(0), (64, 64))
    >>> bool(abs(w).max() <= 0.04)
    True
    """
    s = _number("truncated_normal", "stddev", stddev)
    lo = _number("truncated_normal", "lower", lower)
    hi = _number("truncated_normal", "upper", upper)
    # stddev < 0 mirrors the interval: -|s| * [lower, upper] = |s| * [-upper, -lower]
    spec = specs.TruncatedNormal(s, lo, hi) if s >= 0 else specs.TruncatedNormal(-s, -hi, -lo)
    return _jax("truncated_normal", spec, dtype,
                [("stddev", stddev), ("lower", lower), ("upper", upper)])


# ---------------------------------------------------------- variance scaling


def _axes_arg(arg: str, value) -> int | tuple[int, ...]:
    """An axis argument as JAX reads it: one int, or a sequence of ints (kept apart:
    JAX's "default in_axis" rule applies to the int ``-2`` only)."""
    if isinstance(value, bool):
        raise TypeError(f"variance_scaling: {arg} must be an int or a sequence of ints; "
                        f"got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        items = tuple(value)
        if any(isinstance(a, bool) for a in items):
            raise TypeError
        return tuple(operator.index(a) for a in items)
    except TypeError:
        raise TypeError(f"variance_scaling: {arg} must be an int or a sequence of ints; "
                        f"got {value!r}") from None


def _axes_size(shape, arg: str, axes) -> int:
    ndim = len(shape)
    for a in (axes,) if isinstance(axes, int) else axes:
        if not -ndim <= a < ndim:
            raise AxisError(f"variance_scaling: {arg}={a} is out of range for shape {tuple(shape)}")
    return shape[axes] if isinstance(axes, int) else math.prod(shape[a] for a in axes)


@dataclass(frozen=True, repr=False)
class AxesVarianceScaling(specs.Spec):
    """The core ``VarianceScaling`` with JAX's fans: axis groups, batch axes, overlaps.

    Planned on the shape as given. The fans are those of JAX's ``_compute_fans``
    (in JAX's floating-point order): ``receptive = size / in_size / out_size /
    batch_size``, ``fan_in = in_size * receptive``, ``fan_out = out_size *
    receptive``, where every axis outside the three groups is receptive field;
    ``in_axis`` and ``out_axis`` may name the same axis (Flax's ``Embed``
    default, ``out_axis=0`` on ``(num, features)``, gives ``fan_in = features``)
    and fans may be fractional. The core spec turns them into the distribution.
    Not registered (``name`` is empty).
    """

    name: ClassVar[str] = ""
    scaling: specs.VarianceScaling = field(default_factory=specs.VarianceScaling)
    in_axis: int | tuple[int, ...] = -2
    out_axis: int | tuple[int, ...] = -1
    batch_axis: int | tuple[int, ...] = ()

    def fans(self, shape) -> tuple[float, float]:
        if isinstance(self.in_axis, int) and self.in_axis == -2 and len(shape) <= 1:
            raise ShapeError(
                f"Can't compute input and output sizes of a {len(shape)}-dimensional weights "
                "tensor with default in_axis. Must be at least 2D or specify in_axis explicitly."
            )
        size_in = _axes_size(shape, "in_axis", self.in_axis)
        size_out = _axes_size(shape, "out_axis", self.out_axis)
        size_batch = _axes_size(shape, "batch_axis", self.batch_axis)
        if 0 in (size_in, size_out, size_batch) or math.prod(shape) == 0:
            raise ZeroSizeError(
                f"variance_scaling: division by zero: the fans of the zero-size shape "
                f"{tuple(shape)} are 0 (jax.nn.initializers raises ZeroDivisionError here too)"
            )
        receptive = math.prod(shape) / size_in / size_out / size_batch
        return size_in * receptive, size_out * receptive

    def plan(self, shape):
        return self.scaling.plan_fans(*self.fans(shape))

    def complex_plan(self, shape):
        return self.scaling.complex_plan_fans(*self.fans(shape))

    def __repr__(self) -> str:
        return (f"variance_scaling({self.scaling!r}, in_axis={self.in_axis}, "
                f"out_axis={self.out_axis}, batch_axis={self.batch_axis})")


def _scaled(name, scale, mode, distribution, in_axis, out_axis, batch_axis, dtype, args):
    vs = specs.VarianceScaling(_number(name, "scale", scale), mode, distribution)
    spec = AxesVarianceScaling(vs, _axes_arg("in_axis", in_axis), _axes_arg("out_axis", out_axis),
                               _axes_arg("batch_axis", batch_axis))
    return _jax(name, spec, dtype, args)


def _axes_args(in_axis, out_axis, batch_axis):
    return [("in_axis", in_axis), ("out_axis", out_axis), ("batch_axis", batch_axis)]


def variance_scaling(
    scale,
    mode: str,
    distribution: str,
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
    dtype=None,
) -> JaxInitializer:
    r"""``jax.nn.initializers.variance_scaling``: samples with variance ``scale / n``.

    ``n`` is, for ``mode``: ``fan_in``, ``fan_out``, ``fan_avg`` = (fan_in +
    fan_out) / 2, or ``fan_geo_avg`` = sqrt(fan_in * fan_out). ``distribution``:

    * ``"truncated_normal"``: :math:`\mathcal{N}(0, \sigma^2)` truncated to
      :math:`\pm 2\sigma`, with :math:`\sigma = \sqrt{\text{scale}/n} / 0.8796...`
      so that the standard deviation after truncation is :math:`\sqrt{\text{scale}/n}`;
    * ``"normal"``: :math:`\mathcal{N}(0, \text{scale}/n)`, untruncated;
    * ``"uniform"``: :math:`\mathcal{U}(\pm\sqrt{3\,\text{scale}/n})`.

    Complex dtypes, as JAX: ``uniform`` is uniform on a disk with
    :math:`E|w|^2 = \text{scale}/n`, ``normal`` a complex normal with that
    :math:`E|w|^2`, ``truncated_normal`` a complex normal with its modulus
    truncated at 2, scaled by JAX's constant (:math:`E|w|^2 \approx 1.019\,\text{scale}/n`).

    Fans: ``in_axis``/``out_axis`` (ints or sequences of ints) hold the input and
    output sizes, ``batch_axis`` counts for neither, every other axis is the
    receptive field, as JAX's ``_compute_fans`` (Flax's ``Embed`` default
    ``variance_scaling(1.0, "fan_in", "normal", out_axis=0)`` gives
    :math:`\mathcal{N}(0, 1/\text{features})`).

    Raises:
        ModeError (``ValueError``): unknown ``mode`` or ``distribution``, at
            construction (JAX raises when called), with JAX's message.
        BoundsError (``ValueError``): ``scale < 0``.
        ShapeError (``ValueError``), when called: fewer than 2 dimensions with the
            default ``in_axis`` (JAX's message); AxisError (``IndexError``): an
            axis out of range; ZeroSizeError (``ZeroDivisionError``): a zero-size shape.

    >>> init = variance_scaling(2.0, "fan_in", "truncated_normal")
    >>> init(jax.random.key(0), (3, 3, 16, 32)).shape
    (3, 3, 16, 32)
    """
    return _scaled("variance_scaling", scale, mode, distribution, in_axis, out_axis, batch_axis,
                   dtype, [("scale", scale), ("mode", mode), ("distribution", distribution),
                           *_axes_args(in_axis, out_axis, batch_axis)])


def lecun_normal(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (),
                 dtype=None) -> JaxInitializer:
    """LeCun normal: :func:`variance_scaling` with (1, fan_in, truncated_normal).

    Flax's default kernel initializer.

    >>> lecun_normal()(jax.random.key(0), (400, 30)).shape
    (400, 30)
    """
    return _scaled("lecun_normal", 1.0, "fan_in", "truncated_normal", in_axis, out_axis,
                   batch_axis, dtype, _axes_args(in_axis, out_axis, batch_axis))


def lecun_uniform(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (),
                  dtype=None) -> JaxInitializer:
    """LeCun uniform: :func:`variance_scaling` with (1, fan_in, uniform).

    >>> w = lecun_uniform()(jax.random.key(0), (300, 30))
    >>> bool(abs(w).max() <= (3 / 300) ** 0.5)
    True
    """
    return _scaled("lecun_uniform", 1.0, "fan_in", "uniform", in_axis, out_axis,
                   batch_axis, dtype, _axes_args(in_axis, out_axis, batch_axis))


def glorot_normal(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (),
                  dtype=None) -> JaxInitializer:
    """Glorot normal: :func:`variance_scaling` with (1, fan_avg, truncated_normal).

    Also :data:`xavier_normal`: **truncated**, as JAX, unlike torch's
    ``xavier_normal_`` (:func:`xinit.flax.torch_init.xavier_normal`).

    >>> glorot_normal()(jax.random.key(0), (3, 3, 8, 16)).shape
    (3, 3, 8, 16)
    """
    return _scaled("glorot_normal", 1.0, "fan_avg", "truncated_normal", in_axis, out_axis,
                   batch_axis, dtype, _axes_args(in_axis, out_axis, batch_axis))


def glorot_uniform(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (),
                   dtype=None) -> JaxInitializer:
    """Glorot uniform: :func:`variance_scaling` with (1, fan_avg, uniform). Also :data:`xavier_uniform`.

    >>> w = glorot_uniform()(jax.random.key(0), (300, 100))
    >>> bool(abs(w).max() <= (6 / 400) ** 0.5)
    True
    """
    return _scaled("glorot_uniform", 1.0, "fan_avg", "uniform", in_axis, out_axis,
                   batch_axis, dtype, _axes_args(in_axis, out_axis, batch_axis))


def he_normal(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (),
              dtype=None) -> JaxInitializer:
    """He normal: :func:`variance_scaling` with (2, fan_in, truncated_normal).

    Also :data:`kaiming_normal`: **truncated**, as JAX, unlike torch's
    ``kaiming_normal_`` (:func:`xinit.flax.torch_init.kaiming_normal`).

    >>> he_normal()(jax.random.key(0), (100, 400)).shape
    (100, 400)
    """
    return _scaled("he_normal", 2.0, "fan_in", "truncated_normal", in_axis, out_axis,
                   batch_axis, dtype, _axes_args(in_axis, out_axis, batch_axis))


def he_uniform(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (),
               dtype=None) -> JaxInitializer:
    """He uniform: :func:`variance_scaling` with (2, fan_in, uniform). Also :data:`kaiming_uniform`.

    >>> w = he_uniform()(jax.random.key(0), (100, 400))
    >>> bool(abs(w).max() <= (6 / 100) ** 0.5)
    True
    """
    return _scaled("he_uniform", 2.0, "fan_in", "uniform", in_axis, out_axis,
                   batch_axis, dtype, _axes_args(in_axis, out_axis, batch_axis))


xavier_uniform = glorot_uniform
"""JAX's alias of :func:`glorot_uniform` (torch's ``xavier_uniform_`` draws the same distribution)."""
xavier_normal = glorot_normal
"""JAX's alias of :func:`glorot_normal`: **truncated**, unlike torch's ``xavier_normal_``."""
kaiming_uniform = he_uniform
"""JAX's alias of :func:`he_uniform`: torch's ``kaiming_uniform_`` with ``nonlinearity="relu"``."""
kaiming_normal = he_normal
"""JAX's alias of :func:`he_normal`: **truncated**, unlike torch's ``kaiming_normal_``."""


# --------------------------------------------------------------- orthogonal


def _column_axis(name: str, column_axis) -> int:
    if isinstance(column_axis, bool):
        raise TypeError(f"{name}: column_axis must be an int; got {column_axis!r}")
    try:
        return operator.index(column_axis)
    except TypeError:
        raise TypeError(f"{name}: column_axis must be an int; got {column_axis!r}") from None


def _orthogonal_layout(column_axis: int) -> Layout:
    """The layout whose canonical ``(out, in, *rest)`` puts ``column_axis`` first.

    JAX's matrix is ``(size / n_cols, n_cols)`` with ``n_cols = shape[column_axis]``;
    the canonical orthogonal draw is ``(out, in * rest)`` with ``out = n_cols``: its
    transpose, with the rows of JAX's matrix in another order. Transposing and
    permuting rows keep a Haar-distributed matrix Haar-distributed, so the result
    is distributed as JAX's (orthonormal along the same axes).
    """
    other = (1 if column_axis == 0 else 0) if column_axis >= 0 else (-2 if column_axis == -1 else -1)
    return Layout(in_axis=other, out_axis=column_axis)


def orthogonal(scale=1.0, column_axis: int = -1, dtype=None) -> JaxInitializer:
    """``jax.nn.initializers.orthogonal``: a uniformly distributed orthogonal matrix times ``scale``.

    For a shape with ``n_cols = shape[column_axis]`` and ``n_rows`` the product of
    the other axes: orthonormal rows or columns of the ``(n_rows, n_cols)``
    matrix, whichever side is smaller (Haar-distributed). Complex dtypes give a
    unitary matrix. float16/bfloat16 are computed in float32 (JAX raises there).
    A zero-size shape gives zeros. torch's ``orthogonal_(gain)`` (flattening
    ``(out, in, *k)``) is :func:`xinit.flax.torch_init.orthogonal`.

    Raises:
        ShapeError (``ValueError``), when called: fewer than 2 dimensions.
        AxisError (``IndexError``): ``column_axis`` out of range.
        NotImplementedError: any ``out_sharding``, as JAX.

    >>> q = orthogonal()(jax.random.key(0), (5, 3))
    >>> bool(jnp.allclose(q.T @ q, jnp.eye(3), atol=1e-5))
    True
    """
    axis = _column_axis("orthogonal", column_axis)
    spec = specs.Orthogonal(_number("orthogonal", "scale", scale))
    return _jax("orthogonal", spec, dtype, [("scale", scale), ("column_axis", column_axis)],
                layout=_orthogonal_layout(axis), shardable=False)


@dataclass(frozen=True, repr=False)
class DeltaOrthogonal:
    """The initializer :func:`delta_orthogonal` returns (frozen, hashable)."""

    ortho: JaxInitializer
    scale: float = 1.0
    column_axis: int = -1
    dtype: object = None
    name: ClassVar[str] = "delta_orthogonal"

    def __call__(self, key, shape, dtype=None, out_sharding=None) -> jax.Array:
        if out_sharding is not None:
            raise NotImplementedError(
                "xinit.flax.delta_orthogonal does not take out_sharding (jax.nn.initializers."
                "delta_orthogonal raises NotImplementedError here too)"
            )
        shape = as_shape(shape)
        dtype = self.ortho.resolve_dtype(dtype)  # the factory's dtype when None
        if len(shape) not in (3, 4, 5):
            raise ShapeError(
                f"Delta orthogonal initializer requires a 3D, 4D or 5D shape.; got shape {shape}"
            )
        if shape[-1] < shape[-2]:
            raise ShapeError(
                "`fan_in` must be less or equal than `fan_out`. delta_orthogonal got shape "
                f"{shape} with in={shape[-2]} > out={shape[-1]}"
            )
        q = self.ortho(key, shape[-2:], dtype)
        centre = tuple((k - 1) // 2 for k in shape[:-2])
        with x64_scope(dtype):
            out = jnp.zeros(shape, q.dtype).at[centre].set(q)
            return place(out, None, f"xinit.flax.{self.name}")

    def __repr__(self) -> str:
        dt = "" if self.dtype is None else f", dtype={np.dtype(self.dtype).name}"
        return (f"xinit.flax.delta_orthogonal(scale={self.scale!r}, "
                f"column_axis={self.column_axis}{dt})")


def delta_orthogonal(scale=1.0, column_axis: int = -1, dtype=None) -> DeltaOrthogonal:
    """``jax.nn.initializers.delta_orthogonal``: an orthogonal matrix at the kernel's centre.

    For a 3/4/5-D kernel ``(*k, in, out)`` with ``in <= out``: zeros everywhere
    except ``kernel[(k1 - 1) // 2, ..., :, :]``, :func:`orthogonal` ``(scale,
    column_axis)`` of the ``(in, out)`` matrix (Xiao et al. 2018, "Dynamical
    Isometry and a Mean Field Theory of CNNs"). The centre is ``(k - 1) // 2`` as
    JAX (torch's ``dirac_`` uses ``k // 2``; they differ for even ``k``).

    Raises:
        ShapeError (``ValueError``), when called: not 3/4/5-D, or ``in > out``
            (JAX's messages).
        NotImplementedError: any ``out_sharding``, as JAX.

    >>> w = delta_orthogonal()(jax.random.key(0), (3, 3, 4, 8))
    >>> bool(jnp.allclose(w[1, 1] @ w[1, 1].T, jnp.eye(4), atol=1e-5)), float(abs(w[0]).max())
    (True, 0.0)
    """
    s = _number("delta_orthogonal", "scale", scale)
    axis = _column_axis("delta_orthogonal", column_axis)
    ortho = _jax("delta_orthogonal", specs.Orthogonal(s), dtype,
                 [("scale", scale), ("column_axis", column_axis)],
                 layout=_orthogonal_layout(axis), shardable=False)
    return DeltaOrthogonal(ortho, s, axis, check_dtype(dtype))
