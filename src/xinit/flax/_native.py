r"""The ``jax.nn.initializers`` family, with jax's names, arguments and distributions.

``variance_scaling`` and its specializations (``lecun_*``, ``glorot_*``,
``he_*``), ``truncated_normal`` (bounds in units of ``stddev``) and
``delta_orthogonal``. A Flax user can switch to these without changing any
parameter's distribution; the values are not jax's bit for bit (xinit draws on
its own canonical layout). Unlike jax, arguments are validated when the
initializer is built, not when it is first called.
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
from xinit.core.arrays import sample
from xinit.core.engine import x64_scope
from xinit.core.errors import ShapeError, XinitError
from xinit.core.layout import Layout

from ._initializers import (
    IDENTITY,
    SpecInitializer,
    _check_dtype,
    apply_sharding,
    ensure_checked,
    resolve_dtype,
    with_context,
)

__all__ = [
    "variance_scaling",
    "lecun_normal",
    "lecun_uniform",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "truncated_normal",
    "delta_orthogonal",
]

Axes = int | Sequence[int]


def _axes(arg: str, value) -> tuple[int, ...]:
    items = (value,) if isinstance(value, (int, np.integer)) else value
    try:
        out = tuple(operator.index(a) for a in items)
    except TypeError:
        raise TypeError(f"variance_scaling: {arg} must be an int or a sequence of ints; "
                        f"got {value!r}") from None
    if any(isinstance(a, bool) for a in items):
        raise TypeError(f"variance_scaling: {arg} must be an int or a sequence of ints; "
                        f"got {value!r}")
    return out


@dataclass(frozen=True, repr=False)
class _GroupedVarianceScaling(specs.Spec):
    """``VarianceScaling`` with jax's general axes: axis groups, batch axes, overlaps.

    Planned on the shape as given (identity layout). The fans are jax's
    ``_compute_fans``: ``fan_in = size / (out_size * batch_size)`` and
    ``fan_out = size / (in_size * batch_size)``, where every axis outside the
    groups is receptive field. They are handed to the core ``VarianceScaling``
    as the weight ``(fan_out, fan_in)``, whose fans they are; the draw covers
    the whole shape. jax allows ``in_axis`` and ``out_axis`` to name one axis
    (Flax's ``Embed`` default, ``out_axis=0`` on ``(num, features)``, gives
    ``fan_in = features``). Not registered (``name`` is empty).
    """

    name: ClassVar[str] = ""
    scaling: specs.VarianceScaling = field(default_factory=specs.VarianceScaling)
    in_axis: tuple[int, ...] = (-2,)
    out_axis: tuple[int, ...] = (-1,)
    batch_axis: tuple[int, ...] = ()

    def plan(self, shape):
        ndim = len(shape)
        if self.in_axis == (-2,) and ndim <= 1:
            raise ShapeError(
                f"variance_scaling can't compute input and output sizes of a {ndim}-D shape "
                f"{tuple(shape)} with the default in_axis; the shape must be at least 2-D, "
                "or pass in_axis explicitly"
            )
        sizes = []
        for arg, axes in (("in_axis", self.in_axis), ("out_axis", self.out_axis),
                          ("batch_axis", self.batch_axis)):
            for a in axes:
                if not -ndim <= a < ndim:
                    raise ShapeError(
                        f"variance_scaling: {arg}={a} is out of range for shape {tuple(shape)}"
                    )
            sizes.append(math.prod(shape[a] for a in axes))
        size_in, size_out, size_batch = sizes
        total = math.prod(shape)
        if total == 0:
            return self.scaling.plan((0, 0))
        fan_in, r_in = divmod(total, size_out * size_batch)
        fan_out, r_out = divmod(total, size_in * size_batch)
        if r_in or r_out:
            raise ShapeError(
                f"variance_scaling: in_axis={self.in_axis}, out_axis={self.out_axis} and "
                f"batch_axis={self.batch_axis} give fractional fans for shape {tuple(shape)}"
            )
        return self.scaling.plan((fan_out, fan_in))

    def __repr__(self) -> str:
        return (f"variance_scaling({self.scaling!r}, in_axis={self.in_axis}, "
                f"out_axis={self.out_axis}, batch_axis={self.batch_axis})")


def variance_scaling(
    scale: float,
    mode: str,
    distribution: str,
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
    dtype=None,
) -> SpecInitializer:
    r"""``jax.nn.initializers.variance_scaling``: samples with variance ``scale / n``.

    ``n`` is, for ``mode``: ``fan_in``, ``fan_out``, ``fan_avg`` = (fan_in +
    fan_out) / 2, or ``fan_geo_avg`` = sqrt(fan_in * fan_out). ``distribution``:

    * ``"truncated_normal"``: :math:`\mathcal{N}(0, \sigma^2)` truncated to
      :math:`\pm 2\sigma`, with :math:`\sigma = \sqrt{\text{scale}/n} / 0.8796...`
      so that the standard deviation after truncation is :math:`\sqrt{\text{scale}/n}`;
    * ``"normal"``: :math:`\mathcal{N}(0, \text{scale}/n)`, untruncated;
    * ``"uniform"``: :math:`\mathcal{U}(\pm\sqrt{3\,\text{scale}/n})`.

    Fans: ``in_axis``/``out_axis`` (ints or sequences of ints) hold the input and
    output sizes, ``batch_axis`` counts for neither, every other axis is the
    receptive field, as jax's ``_compute_fans`` (including its reading of an
    ``in_axis`` and ``out_axis`` that name the same axis: Flax's ``Embed``
    default ``variance_scaling(1.0, "fan_in", "normal", out_axis=0)`` gives
    :math:`\mathcal{N}(0, 1/\text{features})`). Real dtypes only.

    Raises:
        BoundsError (``ValueError``): ``scale < 0``.
        ModeError (``ValueError``): unknown ``mode`` or ``distribution`` (at construction).
        ShapeError (``ValueError``), when called: fewer than 2 dimensions, or axes
            out of range.

    >>> init = variance_scaling(2.0, "fan_in", "truncated_normal")
    >>> init(jax.random.key(0), (3, 3, 16, 32)).shape
    (3, 3, 16, 32)
    """
    return _scaled("variance_scaling", scale, mode, distribution, in_axis, out_axis, batch_axis,
                   dtype)


def _scaled(name, scale, mode, distribution, in_axis, out_axis, batch_axis, dtype):
    vs = specs.VarianceScaling(scale, mode, distribution)
    ins, outs = _axes("in_axis", in_axis), _axes("out_axis", out_axis)
    batch = _axes("batch_axis", batch_axis)
    dtype = _check_dtype(dtype)
    # One in and one out axis counted from the same end never name the same axis:
    # then the fans are a core Layout's, and the draw is in canonical order.
    if len(ins) == 1 and len(outs) == 1 and not batch and ins != outs and (
        (ins[0] < 0) == (outs[0] < 0)
    ):
        return SpecInitializer(vs, Layout(ins[0], outs[0]), dtype, name)
    return SpecInitializer(_GroupedVarianceScaling(vs, ins, outs, batch), IDENTITY, dtype, name)


def lecun_normal(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (), dtype=None):
    """LeCun normal: :func:`variance_scaling` with (1, fan_in, truncated_normal).

    Flax's default kernel initializer.

    >>> lecun_normal()(jax.random.key(0), (400, 30)).shape
    (400, 30)
    """
    return _scaled("lecun_normal", 1.0, "fan_in", "truncated_normal",
                   in_axis, out_axis, batch_axis, dtype)


def lecun_uniform(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (), dtype=None):
    """LeCun uniform: :func:`variance_scaling` with (1, fan_in, uniform).

    >>> w = lecun_uniform()(jax.random.key(0), (300, 30))
    >>> bool(abs(w).max() <= (3 / 300) ** 0.5)
    True
    """
    return _scaled("lecun_uniform", 1.0, "fan_in", "uniform",
                   in_axis, out_axis, batch_axis, dtype)


def glorot_normal(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (), dtype=None):
    """Glorot normal: :func:`variance_scaling` with (1, fan_avg, truncated_normal).

    jax's ``glorot_normal``/``xavier_normal``: **truncated**, unlike torch's
    ``xavier_normal_`` (which is :func:`xavier_normal` here).

    >>> glorot_normal()(jax.random.key(0), (3, 3, 8, 16)).shape
    (3, 3, 8, 16)
    """
    return _scaled("glorot_normal", 1.0, "fan_avg", "truncated_normal",
                   in_axis, out_axis, batch_axis, dtype)


def glorot_uniform(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (), dtype=None):
    """Glorot uniform: :func:`variance_scaling` with (1, fan_avg, uniform).

    >>> w = glorot_uniform()(jax.random.key(0), (300, 100))
    >>> bool(abs(w).max() <= (6 / 400) ** 0.5)
    True
    """
    return _scaled("glorot_uniform", 1.0, "fan_avg", "uniform",
                   in_axis, out_axis, batch_axis, dtype)


def he_normal(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (), dtype=None):
    """He normal: :func:`variance_scaling` with (2, fan_in, truncated_normal).

    jax's ``he_normal``/``kaiming_normal``: **truncated**, unlike torch's
    ``kaiming_normal_`` (which is :func:`kaiming_normal` here).

    >>> he_normal()(jax.random.key(0), (100, 400)).shape
    (100, 400)
    """
    return _scaled("he_normal", 2.0, "fan_in", "truncated_normal",
                   in_axis, out_axis, batch_axis, dtype)


def he_uniform(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = (), dtype=None):
    """He uniform: :func:`variance_scaling` with (2, fan_in, uniform).

    >>> w = he_uniform()(jax.random.key(0), (100, 400))
    >>> bool(abs(w).max() <= (6 / 100) ** 0.5)
    True
    """
    return _scaled("he_uniform", 2.0, "fan_in", "uniform",
                   in_axis, out_axis, batch_axis, dtype)


def truncated_normal(stddev: float = 1e-2, dtype=None, lower: float = -2.0, upper: float = 2.0):
    r"""``jax.nn.initializers.truncated_normal``: ``stddev`` times a truncated normal.

    :math:`\mathcal{N}(0, 1)` truncated to ``[lower, upper]``, times ``stddev``.

    The bounds are in units of ``stddev`` and there is no variance correction
    (``truncated_normal(1.0)`` has standard deviation 0.88), as jax. torch's
    absolute-bound version is :func:`trunc_normal`.

    Raises:
        BoundsError (``ValueError``): ``stddev < 0`` or ``lower > upper``.

    >>> w = truncated_normal(0.02)(jax.random.key(0), (64, 64))
    >>> bool(abs(w).max() <= 0.04)
    True
    """
    spec = specs.TruncatedNormal(stddev, lower, upper)
    return SpecInitializer(spec, IDENTITY, _check_dtype(dtype), "truncated_normal")


@dataclass(frozen=True, repr=False)
class DeltaOrthogonal:
    """The initializer :func:`delta_orthogonal` returns (frozen, hashable)."""

    ortho: specs.Orthogonal
    column_axis: int = -1
    dtype: object = None
    name: ClassVar[str] = "delta_orthogonal"

    def __call__(self, key, shape, dtype=None, out_sharding=None) -> jax.Array:
        dtype = resolve_dtype(dtype, self.dtype)
        shape = tuple(int(d) for d in shape)
        if len(shape) not in (3, 4, 5):
            raise ShapeError(
                f"Delta orthogonal initializer requires a 3D, 4D or 5D shape; got shape {shape}"
            )
        n_in, n_out = shape[-2:]
        if n_out < n_in:
            raise ShapeError(
                "`fan_in` must be less or equal than `fan_out`: delta_orthogonal got shape "
                f"{shape} with in={n_in} > out={n_out}"
            )
        # column_axis picks the matrix whose columns jax's orthogonal makes orthonormal.
        matrix = (n_in, n_out) if self.column_axis % 2 == 1 else (n_out, n_in)
        ensure_checked()
        try:
            q = sample(self.ortho, key, matrix, dtype, layout=IDENTITY)
        except XinitError as err:
            raise with_context(err, self.name, shape, dtype, IDENTITY) from err
        if self.column_axis % 2 == 0:
            q = q.T
        centre = tuple((k - 1) // 2 for k in shape[:-2])
        with x64_scope(dtype):
            out = jnp.zeros(shape, q.dtype).at[centre].set(q)
            return apply_sharding(out, out_sharding)

    def __repr__(self) -> str:
        dt = "" if self.dtype is None else f", dtype={np.dtype(self.dtype).name}"
        return (f"xinit.flax.delta_orthogonal(scale={self.ortho.gain!r}, "
                f"column_axis={self.column_axis}{dt})")


def delta_orthogonal(scale: float = 1.0, column_axis: int = -1, dtype=None) -> DeltaOrthogonal:
    """``jax.nn.initializers.delta_orthogonal``: an orthogonal matrix at the kernel's centre.

    For a 3/4/5-D kernel ``(*k, in, out)`` with ``in <= out``: zeros everywhere
    except ``kernel[(k1 - 1) // 2, ..., :, :]``, an ``(in, out)`` matrix with
    orthonormal rows times ``scale`` (Xiao et al. 2018, "Dynamical Isometry and a
    Mean Field Theory of CNNs"). The centre is ``(k - 1) // 2`` as jax (torch's
    :func:`dirac` uses ``k // 2``; they differ for even ``k``). ``column_axis``
    (``-1`` or ``-2`` of the ``(in, out)`` matrix) is jax's: the axis holding the
    columns the orthogonal draw is taken over.

    Raises:
        ShapeError (``ValueError``), when called: not 3/4/5-D, or ``in > out``
            (jax's messages).

    >>> w = delta_orthogonal()(jax.random.key(0), (3, 3, 4, 8))
    >>> bool(jnp.allclose(w[1, 1] @ w[1, 1].T, jnp.eye(4), atol=1e-5)), float(abs(w[0]).max())
    (True, 0.0)
    """
    try:
        axis = operator.index(column_axis)
    except TypeError:
        raise TypeError(f"delta_orthogonal: column_axis must be an int; got {column_axis!r}"
                        ) from None
    if axis not in (-2, -1, 0, 1) or isinstance(column_axis, bool):
        raise ValueError(
            f"delta_orthogonal: column_axis indexes the (in, out) matrix and must be one of "
            f"[-2, -1, 0, 1]; got column_axis={column_axis!r}"
        )
    return DeltaOrthogonal(specs.Orthogonal(scale), axis, _check_dtype(dtype))
