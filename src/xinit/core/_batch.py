"""Model-level batching: draw many parameters in few compiled calls.

Every parameter is an :class:`Item` (its own key, canonical shape, dtype and
plan). Elementwise items are grouped by ``(family, dtype, device)``, sorted by
name, and packed into *rows* of :data:`ROW` elements: a parameter of ``n``
elements takes ``ceil(n / ROW)`` consecutive rows, and row ``r`` of it holds the
elements ``[r * ROW, (r + 1) * ROW)`` of its flat draw. One compiled program
draws a chunk of rows; each row carries its own key, counter base and family
parameters, which broadcast along the row (no per-element lookup). A group of
more than one chunk is drawn in full chunks (the last one padded), a smaller
group in a power-of-two number of rows, so a model of N identical blocks reuses
the same few programs whatever N is. Full chunks of the normal families run as
two programs (hash, then transform), as the per-tensor kernels do.

Values are a function of (key, canonical shape, dtype, plan) alone: element
``j`` of a parameter is computed from counter ``j`` under the parameter's key by
the same arithmetic as :func:`xinit.core.draw` (``_kernels._family_values``), and
equals it bit for bit (tested), so a model-level value is the per-tensor
drop-in value for the per-name key.

Non-elementwise plans (orthogonal, sparse) are drawn one by one with
:func:`xinit.core.engine.draw_plan`.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _kernels
from .engine import device_scope, draw_plan, x64_scope
from .specs import Elementwise

__all__ = ["Item", "Segment", "draw_items", "fold_in_many", "ROW", "MAX_ROWS"]

ROW = 256  # elements per row: the padding of every parameter is < ROW
MAX_ROWS = _kernels.MAX_CHUNK // ROW  # rows per chunk (4 Mi elements)


class Item(NamedTuple):
    """One parameter to draw: ``plan`` on the canonical ``shape`` with key data ``key``."""

    name: str
    key: Any  # uint32[2] key data
    shape: tuple[int, ...]
    dtype: np.dtype
    plan: Any
    device: Any = None  # a jax device, or None for the default


class Segment(NamedTuple):
    """Elements ``[offset, offset + length)`` of item ``index``'s flat draw: ``array[start:start+length]``."""

    index: int
    offset: int
    length: int
    array: jax.Array
    start: int


def _bucket(n: int, least: int = 1) -> int:
    b = least
    while b < n:
        b *= 2
    return b


def _row_counters(base_lo, base_hi, nrows):
    local = lax.broadcasted_iota(np.uint32, (nrows, ROW), 1)
    return _kernels.counter_words(base_lo[:, None], base_hi[:, None], local)


@functools.cache
def _rows_program(family: str, out_dtype: np.dtype, nrows: int):
    cdt = _kernels.param_dtype(family, out_dtype)

    def program(keys, base_lo, base_hi, fparams, iparams):
        _kernels._count_trace()
        hi, lo = _row_counters(base_lo, base_hi, nrows)
        k1, k2 = keys[:, 0:1], keys[:, 1:2]

        def fp(j):
            return fparams[:, j : j + 1].astype(cdt)

        if family == "uniform":
            # _family_values' uniform with its [a, b) fix-up precomputed per row
            # (fparams[:, 2] = the value a draw that rounded up to b becomes, see
            # _uniform_caps): the same values, without per-element nextafter.
            u = _kernels._unit_uniform(k1, k2, hi, lo, cdt)
            x = _kernels._uniform_between(u, fp(0), fp(1)).astype(out_dtype)
            b = fp(1).astype(out_dtype)
            out = jnp.where(x >= b, fp(2).astype(out_dtype), x)
        else:
            out = _kernels._family_values(
                family, cdt, out_dtype, lo, k1, k2, hi, lo, fp, lambda j: iparams[:, j : j + 1]
            )
        return out.reshape(-1)

    return _kernels._Program(program)


@functools.cache
def _rows_unit_program(cdt: np.dtype, nrows: int):
    def program(keys, base_lo, base_hi):
        _kernels._count_trace()
        hi, lo = _row_counters(base_lo, base_hi, nrows)
        return _kernels._unit_uniform(keys[:, 0:1], keys[:, 1:2], hi, lo, cdt).reshape(-1)

    return _kernels._Program(program)


@functools.cache
def _rows_transform_program(family: str, out_dtype: np.dtype, nrows: int):
    cdt = _kernels.param_dtype(family, out_dtype)

    def program(u, fparams):
        _kernels._count_trace()
        out = _kernels._values_from_unit(
            family, cdt, out_dtype, u.reshape(nrows, ROW), lambda j: fparams[:, j : j + 1].astype(cdt)
        )
        return out.reshape(-1)

    # as _kernels._transform_program: the values may overwrite the dead uniforms
    return _kernels._Program(program, donate_argnums=(0,) if cdt == out_dtype else ())


def _uniform_caps(fparams: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    """Per row: the largest ``out_dtype`` value below ``b`` (``b`` itself when ``a == b``)."""
    b = fparams[:, 1].astype(out_dtype)
    below = np.nextafter(b, np.array(-np.inf, out_dtype))
    return np.where(fparams[:, 0] < fparams[:, 1], below, b).astype(fparams.dtype)


def _run_rows(family, dtype, nrows, keys, base_lo, base_hi, fparams, iparams):
    """One chunk of rows; full chunks of the costly transforms run as hash + transform."""
    if family in _kernels.SPLIT_FAMILIES and nrows == MAX_ROWS:
        u = _rows_unit_program(_kernels.param_dtype(family, dtype), nrows)(keys, base_lo, base_hi)
        return _rows_transform_program(family, dtype, nrows)(u, fparams)
    if family == "uniform":
        fparams = np.concatenate([fparams, _uniform_caps(fparams, dtype)[:, None]], axis=1)
    return _rows_program(family, dtype, nrows)(keys, base_lo, base_hi, fparams, iparams)


def _pack(family, dtype, items, order, device) -> Iterator[list[Segment]]:
    """Chunks of the items ``order`` (indices into ``items``), each a list of segments."""
    fam = _kernels.FAMILIES[family]
    pdt = _kernels.param_dtype(family, dtype)
    pending: list[tuple[int, int, int, int]] = []  # (item, offset, length, rows)
    used = 0
    # A group that needs more than one chunk draws every chunk at full size (the
    # last one padded): one program per family however the rows fall, at the cost
    # of < 1 chunk of wasted draws. A smaller group is padded to a power of two.
    total = sum(-(-math.prod(items[i].shape) // ROW) for i in order)

    def flush(pending, used):
        nrows = MAX_ROWS if total > MAX_ROWS else _bucket(used)
        keys = np.zeros((nrows, 2), np.uint32)
        bases = np.zeros(nrows, np.uint64)
        fparams = np.zeros((nrows, fam.n_float), pdt)
        iparams = np.zeros((nrows, fam.n_int), np.int32)
        row = 0
        for i, off, _, rows in pending:
            it = items[i]
            sl = slice(row, row + rows)
            keys[sl] = np.asarray(it.key, np.uint32)
            bases[sl] = off + ROW * np.arange(rows, dtype=np.uint64)
            if fam.n_float:
                fparams[sl] = np.asarray(it.plan.fparams, pdt)
            if fam.n_int:
                iparams[sl] = it.plan.iparams
            row += rows
        with x64_scope(dtype), device_scope(device):
            out = _run_rows(
                family,
                dtype,
                nrows,
                keys,
                (bases & np.uint64(0xFFFFFFFF)).astype(np.uint32),
                (bases >> np.uint64(32)).astype(np.uint32),
                fparams,
                iparams,
            )
        segs, row = [], 0
        for i, off, length, rows in pending:
            segs.append(Segment(i, off, length, out, row * ROW))
            row += rows
        return segs

    for i in order:
        n = math.prod(items[i].shape)
        off = 0
        while off < n:
            take_rows = min(MAX_ROWS - used, -(-(n - off) // ROW))
            length = min(take_rows * ROW, n - off)
            pending.append((i, off, length, take_rows))
            used += take_rows
            off += length
            if used == MAX_ROWS:
                yield flush(pending, used)
                pending, used = [], 0
    if pending:
        yield flush(pending, used)


def draw_items(items: list[Item], *, ahead: bool = True) -> Iterator[list[Segment]]:
    """Draw every item; yields lists of segments (one chunk's worth at a time).

    Consumers copy each segment where it belongs before asking for the next
    chunk. With ``ahead`` (the default) the next chunk is dispatched before the
    current one is yielded, so XLA draws it while the consumer copies (GPT-2
    small ``initialize``: ~25% faster on 2 cores); at most two chunks are alive
    at a time, else one. Zero-element items yield nothing. Segments of
    non-elementwise plans come from their own draws.
    """
    chunks = _draw_items(items)
    if not ahead:
        yield from chunks
        return
    current = next(chunks, None)
    for following in chunks:  # JAX dispatch is asynchronous: `following` is being drawn
        yield current
        current = following
    if current is not None:
        yield current


def _draw_items(items: list[Item]) -> Iterator[list[Segment]]:
    _kernels.ensure_checked()
    groups: dict[tuple, list[int]] = defaultdict(list)
    dtypes: dict[str, np.dtype] = {}
    others = []
    for i, it in enumerate(items):
        if math.prod(it.shape) == 0:
            continue
        if isinstance(it.plan, Elementwise):
            dt = np.dtype(it.dtype)
            dtypes[dt.name] = dt
            groups[(it.plan.family, dt.name, str(it.device))].append(i)
        else:
            others.append(i)
    for (family, dtype_name, _), idx in sorted(groups.items()):
        idx.sort(key=lambda i: items[i].name)
        yield from _pack(family, dtypes[dtype_name], items, idx, items[idx[0]].device)
    for i in sorted(others, key=lambda i: items[i].name):
        it = items[i]
        pieces = draw_plan(it.plan, it.key, it.shape, np.dtype(it.dtype), device=it.device)
        segs, off = [], 0
        for p in pieces:
            segs.append(Segment(i, off, p.valid, p.array, 0))
            off += p.valid
        yield segs


@functools.cache
def _fold_program(n: int):
    def program(kd, hashes):
        _kernels._count_trace()
        typed = jax.random.wrap_key_data(kd, impl="threefry2x32")
        return jax.vmap(lambda h: jax.random.key_data(jax.random.fold_in(typed, h)))(hashes)

    return jax.jit(program)


def fold_in_many(kd, hashes) -> np.ndarray:
    """``fold_in(key, h)`` key data for every hash ``h``.

    Equals :func:`xinit.core.fold_in_name` per name (``h = stable_hash(name)``).
    Computed on the host with the self-checked threefry (no program to trace or
    compile); should the self-check fail, by one compiled call to
    ``jax.random.fold_in``, padded to a power of two so the program count stays small.
    """
    n = len(hashes)
    if n == 0:
        return np.zeros((0, 2), np.uint32)
    if _kernels.ensure_checked():
        # fold_in(key, h) is the hash of the counter (0, h) under the key: computed
        # on the host with the verified threefry, no program to trace or compile.
        k = np.asarray(kd, np.uint32)
        h = np.asarray(hashes, np.uint32)
        with np.errstate(over="ignore"):
            a, b = _kernels.threefry2x32(k[0], k[1], np.zeros_like(h), h)
        return np.stack([a, b], axis=1)
    size = _bucket(n, 2)
    h = np.zeros(size, np.uint32)
    h[:n] = np.asarray(hashes, np.uint32)
    out = _fold_program(size)(np.asarray(kd, np.uint32), h)
    return np.asarray(out)[:n]
