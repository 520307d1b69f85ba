"""Running specs: the one path from (spec, key, shape, dtype) to values.

:func:`draw` returns the flat draw of a canonical shape as chunk pieces (what the
torch adapter copies into a tensor); :func:`sample` assembles an array in any
layout (what JAX and Flax users get). Both run the same compiled kernels, so the
torch and flax adapters give the same bits for the same key.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _host, _kernels
from ._keys import key_data
from .errors import DtypeError
from .layout import TORCH, Layout, as_shape, canonical_shape
from .specs import (
    ComplexSparsePlan,
    Elementwise,
    OrthogonalPlan,
    RealView,
    SparsePlan,
    Spec,
    UnitaryPlan,
)

__all__ = ["draw", "draw_plan", "iter_plan", "sample", "canonical_dtype", "real_dtype", "x64_scope",
           "FLOAT_DTYPES", "COMPLEX_DTYPES", "DTYPES"]

FLOAT_DTYPES = tuple(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))
# Complex dtypes: random draws on their real view (see specs.RealView), fills directly.
COMPLEX_DTYPES = (np.dtype(np.complex64), np.dtype(np.complex128))
# Dtypes the deterministic families (constant, ones, zeros, eye, dirac) also fill.
DTYPES = FLOAT_DTYPES + COMPLEX_DTYPES + tuple(
    np.dtype(d) for d in (np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16,
                          np.int32, np.int64)
)


def canonical_dtype(dtype) -> np.dtype:
    """``dtype`` as a numpy dtype (``None`` -> float32); raises for unsupported ones."""
    if dtype is None:
        return np.dtype(np.float32)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DtypeError(f"dtype {dtype!r} is not a dtype xinit knows") from None
    if dt not in DTYPES:
        raise DtypeError(
            f"xinit does not support dtype {dt}; supported: {[str(d) for d in DTYPES]}"
        )
    return dt


def real_dtype(dtype) -> np.dtype:
    """The real dtype of a complex one's parts (complex64 -> float32); others as they are."""
    dtype = np.dtype(dtype)
    return np.dtype(f"f{dtype.itemsize // 2}") if dtype.kind == "c" else dtype


@contextlib.contextmanager
def x64_scope(dtype):
    """Enable 64-bit types locally for a 64-bit dtype; the user's config is untouched."""
    if real_dtype(dtype).itemsize == 8 and not jax.config.jax_enable_x64:
        with jax.enable_x64(True):
            yield
    else:
        yield


def device_scope(device):
    """``jax.default_device(device)``, or nothing to enter when ``device`` is None."""
    return jax.default_device(device) if device is not None else contextlib.nullcontext()


def draws_random(plan) -> bool:
    """Whether ``plan`` draws random floats (and so needs a floating dtype)."""
    return not isinstance(plan, Elementwise) or _kernels.FAMILIES[plan.family].random


def _checked_plan(spec: Spec, shape: tuple[int, ...], dtype: np.dtype):
    """``spec``'s plan for the canonical ``shape``, its dtype checked (raises before any draw).

    For a complex dtype: the spec's :meth:`~xinit.core.Spec.complex_plan` (a
    :class:`~xinit.core.specs.RealView` for random values, drawn in the real dtype).
    """
    if dtype in COMPLEX_DTYPES:
        return spec.complex_plan(shape)
    plan = spec.plan(shape)
    if draws_random(plan) and dtype not in FLOAT_DTYPES:
        raise DtypeError(
            f"{spec.name} draws random floats and does not support dtype {dtype}; "
            f"use one of {[str(d) for d in FLOAT_DTYPES]} (constant, ones, zeros, eye and "
            "dirac also fill integer and bool tensors)"
        )
    return plan


def draw(spec: Spec, key, shape, dtype=None, *, device=None) -> list[_kernels.Piece]:
    """The flat row-major draw of ``spec`` on the canonical ``shape``, as pieces.

    Validates everything before anything runs. Returns ``[]`` for zero elements.
    """
    shape = as_shape(shape)
    dtype = canonical_dtype(dtype)
    return draw_plan(_checked_plan(spec, shape, dtype), key, shape, dtype, device=device)


def draw_plan(plan, key, shape, dtype, *, device=None) -> list[_kernels.Piece]:
    """Run an already validated plan (see :meth:`Spec.plan`) on the canonical ``shape``.

    A :class:`~xinit.core.specs.RealView` plan of a complex ``dtype`` yields the
    pieces of its real view ``(*shape, 2)`` in the real dtype.
    """
    if isinstance(plan, RealView):
        return draw_plan(plan.plan, key, (*shape, 2), real_dtype(dtype), device=device)
    n = math.prod(shape)
    kd = key_data(key)
    if n == 0:
        return []
    _kernels.ensure_checked()
    with x64_scope(dtype), device_scope(device):
        if isinstance(plan, UnitaryPlan):  # the real view (rows, cols, 2) of a complex matrix
            return _kernels.run_unitary(kd, plan.rows, plan.cols, dtype, plan.gain)
        if isinstance(plan, ComplexSparsePlan):
            return _kernels.run_sparse_complex(kd, shape[0], shape[1], dtype, plan.zeros, plan.std)
        if isinstance(plan, Elementwise):
            return _kernels.run_elementwise(plan.family, dtype, n, kd, plan.fparams, plan.iparams)
        if isinstance(plan, OrthogonalPlan):
            return _kernels.run_orthogonal(kd, plan.rows, plan.cols, dtype, plan.gain)
        if isinstance(plan, SparsePlan):
            return _kernels.run_sparse(kd, shape[0], shape[1], dtype, plan.zeros, plan.std)
    raise AssertionError(plan)


def iter_plan(plan, key, shape, dtype, *, device=None) -> Iterator[_kernels.Piece]:
    """:func:`draw_plan`'s pieces, one chunk ahead: chunk ``k + 1`` is dispatched before chunk ``k``
    is yielded, so a consumer copying pieces out overlaps with the next draw while at most
    two chunks are alive (``draw_plan`` dispatches them all at once). The same values.

    A validated plan can still fail to dispatch a later chunk (e.g. out of memory); a
    consumer writing pieces as they come may then have written the earlier ones.
    """
    n = math.prod(shape)
    if not isinstance(plan, Elementwise) or n <= _kernels.MAX_CHUNK:
        yield from draw_plan(plan, key, shape, dtype, device=device)
        return
    kd = key_data(key)
    _kernels.ensure_checked()

    def chunk(pos: int) -> list[_kernels.Piece]:
        with x64_scope(dtype), device_scope(device):
            return _kernels.run_elementwise(plan.family, dtype, min(_kernels.MAX_CHUNK, n - pos), kd,
                                            plan.fparams, plan.iparams, offset=pos)

    pending = chunk(0)
    for pos in range(_kernels.MAX_CHUNK, n, _kernels.MAX_CHUNK):
        following = chunk(pos)
        yield from pending
        pending = following
    yield from pending


@functools.cache
def _assembler(valids: tuple[int, ...], shape: tuple[int, ...], perm: tuple[int, ...]):
    def assemble(*chunks):
        flat = _kernels._concat_prefix(
            [_kernels.Piece(c, v) for c, v in zip(chunks, valids, strict=True)], math.prod(shape)
        )
        return flat.reshape(shape).transpose(perm)

    return jax.jit(assemble)


def sample(spec: Spec, key, shape, dtype=None, *, layout: Layout = TORCH, device=None) -> jax.Array:
    """Draw ``spec`` for a weight of ``shape`` stored in ``layout``.

    The values are those of the canonical shape, moved into ``layout`` by a pure
    transpose: ``sample(s, k, (3, 3, 8, 16), layout=FLAX)`` equals
    ``sample(s, k, (16, 8, 3, 3)).transpose(2, 3, 1, 0)`` bit for bit.

    Complex dtypes draw the spec's complex form (see
    :meth:`~xinit.core.Spec.complex_plan`).

    >>> from xinit.core import Uniform
    >>> sample(Uniform(-1, 1), 0, (4, 3)).shape
    (4, 3)
    """
    shape = as_shape(shape)
    dtype = canonical_dtype(dtype)
    canon = canonical_shape(shape, layout)
    inv = layout.inverse_permutation(len(shape))
    plan = _checked_plan(spec, canon, dtype)
    n = math.prod(shape)
    if isinstance(plan, RealView):
        return _sample_complex(plan, key, shape, canon, layout, dtype, device)
    identity = inv == tuple(range(len(shape)))
    if n and device is None and _host.on_host() and not _kernels._is_tracer(key_data(key)):
        return _sample_on_host(plan, key, shape, canon, layout, dtype, identity)
    pieces = draw_plan(plan, key, canon, dtype, device=device)
    with x64_scope(dtype):
        if not pieces:
            return jnp.zeros(shape, dtype)
        if any(_kernels._is_tracer(p.array) for p in pieces):
            flat = _kernels._concat_prefix(pieces, n)
            return flat.reshape(canon).transpose(inv)
        if len(pieces) == 1 and pieces[0].valid == pieces[0].array.shape[0] and identity:
            return pieces[0].array.reshape(shape)
        return _assembler(tuple(p.valid for p in pieces), canon, inv)(*(p.array for p in pieces))


def _sample_complex(plan: RealView, key, shape, canon, layout: Layout, dtype, device) -> jax.Array:
    """:func:`sample` for a complex ``dtype``: the real view ``(*canon, 2)`` drawn in the
    real dtype, moved into ``layout`` (the parts axis stays last), read as complex.

    On the CPU the pieces are written straight into the real view of the
    complex result's host buffer, which JAX adopts; elsewhere (and under a
    trace) ``lax.complex`` joins the parts."""
    ndim, n = len(shape), math.prod(shape)
    perm = (*layout.permutation(ndim), ndim)
    inv = (*layout.inverse_permutation(ndim), ndim)
    real = real_dtype(dtype)
    on_host = device is None and _host.on_host() and not _kernels._is_tracer(key_data(key))
    with x64_scope(dtype):
        if n == 0:
            return jnp.zeros(shape, dtype)
        pieces = draw_plan(plan, key, canon, dtype, device=device)
        if on_host:
            out = _host.aligned_empty(shape, dtype)
            parts = out.reshape(-1).view(real).reshape(*shape, 2)
            _host.write_flat(parts.transpose(perm), [np.asarray(p.array)[: p.valid] for p in pieces])
            return _host.adopt(out)
        parts = _kernels._concat_prefix(pieces, 2 * n).reshape(*canon, 2).transpose(inv)
        return lax.complex(parts[..., 0], parts[..., 1])


def _sample_on_host(plan, key, shape, canon, layout: Layout, dtype, identity: bool) -> jax.Array:
    """:func:`sample` on the CPU: a draw that is one whole chunk in the right layout is
    returned as it is; otherwise the pieces are written straight into the result's
    host buffer, transposed on the fly (numpy, 64 rows at a time: ~1.7x faster here
    than XLA:CPU's transpose), and JAX adopts the buffer, so nothing is compiled per
    shape (JAX slices, concatenates and transposes would compile once per shape). A
    constant is one fill of its value as the kernel casts it."""
    with x64_scope(dtype):
        if isinstance(plan, Elementwise) and plan.family == "constant":
            out = _host.aligned_empty(shape, dtype)
            out.fill(np.asarray(draw_plan(plan, key, (1,), dtype)[0].array)[0])
            return _host.adopt(out)
        pieces = draw_plan(plan, key, canon, dtype)
        if identity and len(pieces) == 1 and pieces[0].valid == len(pieces[0].array):
            return pieces[0].array.reshape(shape)  # the drawn chunk is the result
        out = _host.aligned_empty(shape, dtype)
        _host.write_flat(out.transpose(layout.permutation(len(shape))),
                         [np.asarray(p.array)[: p.valid] for p in pieces])
        return _host.adopt(out)
