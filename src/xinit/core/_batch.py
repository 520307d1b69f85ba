"""Model-level batching: draw many parameters in few compiled calls.

Every parameter is an :class:`Item` (its own key, canonical shape, dtype and
plan). Elementwise items are grouped by ``(family, dtype, device)``, sorted by
name, and packed as segments into fixed-size chunks that
:func:`xinit.core._kernels.run_packed` draws in one call each: segment ``s``
uses its parameter's key and the counter of its position in that parameter's
flat draw. Chunk sizes come from ``_kernels.CHUNK_SIZES`` and the segment count
is padded to a power of two (at least 2), so a model of N identical blocks
reuses the same few programs whatever N is.

Values are a function of (key, canonical shape, dtype, plan) alone: the random
bits of element ``j`` are those of counter ``j`` under the parameter's key, and
every multi-segment program computes the same floats (tested). They can differ
from the single-tensor path (:func:`xinit.core.draw`) by about 1 ulp for the
normal family, whose single-segment program XLA fuses differently.

Non-elementwise plans (orthogonal, sparse) are drawn one by one with
:func:`xinit.core.engine.draw_plan`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from . import _kernels
from .engine import draw_plan, x64_scope
from .specs import Elementwise

__all__ = ["Item", "Segment", "draw_items", "fold_in_many", "MIN_SEGMENTS"]

MIN_SEGMENTS = 2  # the single-segment program rounds normals differently; never use it


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


def _seg_bucket(n: int) -> int:
    b = MIN_SEGMENTS
    while b < n:
        b *= 2
    return b


def _device_ctx(device):
    return jax.default_device(device) if device is not None else contextlib.nullcontext()


def _pack(family, dtype, items, order, device) -> Iterator[list[Segment]]:
    """Chunks of the items ``order`` (indices into ``items``), each a list of segments."""
    fam = _kernels.FAMILIES[family]
    pdt = _kernels.param_dtype(family, dtype)
    pending: list[tuple[int, int, int]] = []  # (item index, offset, length)
    used = 0

    def flush(pending, used):
        size = next((c for c in _kernels.CHUNK_SIZES if c >= used), _kernels.MAX_CHUNK)
        nseg = _seg_bucket(len(pending))
        keys = np.zeros((nseg, 2), np.uint32)
        starts = np.full(nseg, size, np.int32)
        bases = np.zeros(nseg, np.uint64)
        fparams = np.zeros((nseg, fam.n_float), pdt)
        iparams = np.zeros((nseg, fam.n_int), np.int32)
        pos = 0
        for s, (i, off, length) in enumerate(pending):
            it = items[i]
            keys[s] = np.asarray(it.key, np.uint32)
            starts[s] = pos
            bases[s] = off
            if fam.n_float:
                fparams[s] = np.asarray(it.plan.fparams, pdt)
            if fam.n_int:
                iparams[s] = it.plan.iparams
            pos += length
        with x64_scope(dtype), _device_ctx(device):
            out = _kernels.run_packed(family, dtype, size, keys, starts, bases, fparams, iparams)
        segs, pos = [], 0
        for i, off, length in pending:
            segs.append(Segment(i, off, length, out, pos))
            pos += length
        return segs

    for i in order:
        n = math.prod(items[i].shape)
        off = 0
        while off < n:
            room = _kernels.MAX_CHUNK - used
            take = min(room, n - off)
            pending.append((i, off, take))
            used += take
            off += take
            if used == _kernels.MAX_CHUNK:
                yield flush(pending, used)
                pending, used = [], 0
    if pending:
        yield flush(pending, used)


def draw_items(items: list[Item]) -> Iterator[list[Segment]]:
    """Draw every item; yields lists of segments (one chunk's worth at a time).

    Consumers copy each segment where it belongs before asking for the next
    chunk, so at most one chunk is alive at a time. Zero-element items yield
    nothing. Segments of non-elementwise plans come from their own draws.
    """
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
    """``fold_in(key, h)`` key data for every hash ``h``, in one compiled call.

    Equals :func:`xinit.core.fold_in_name` per name (``h = stable_hash(name)``).
    The batch is padded to a power of two so the program count stays small.
    """
    n = len(hashes)
    if n == 0:
        return np.zeros((0, 2), np.uint32)
    size = _seg_bucket(n)
    h = np.zeros(size, np.uint32)
    h[:n] = np.asarray(hashes, np.uint32)
    out = _fold_program(size)(np.asarray(kd, np.uint32), h)
    return np.asarray(out)[:n]
