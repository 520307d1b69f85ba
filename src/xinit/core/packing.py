"""How requests become chunks: regions as runs of the flat tensor, groups, packed rows.

The engine (:mod:`xinit.core.engine`) draws elementwise requests in chunks of
rows of :data:`ROW` elements. This module decides what goes where:

- a region of a canonical tensor is a set of *runs*, flat index ranges of the
  whole tensor, in the region's row-major order (:func:`runs_of`). Long runs
  take whole rows each (a run's padding is < ``ROW``); a region of many short
  runs (a narrow column block) is packed densely, one counter per element;
- requests are grouped by (family, dtype, device, packing) (:func:`groups_of`):
  a group that fits in one chunk is padded to the next of
  :data:`~xinit.core.programs.ROW_BUCKETS` rows, a larger one is drawn in full
  chunks of :data:`MAX_ROWS` rows (one program per group, however the rows fall);
- :func:`pack` writes each chunk's per-row data (key, first counter, parameters)
  and its :class:`Segment` list: which values of the chunk are which elements of
  which request's region.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np

from . import distributions as dist
from . import programs
from .programs import MAX_ROWS, ROW

if TYPE_CHECKING:
    from .engine import Request

__all__ = ["ROW", "MAX_ROWS", "Segment", "Runs", "runs_of", "Group", "groups_of", "ChunkArgs", "pack",
           "chunk_size", "group_programs", "split64"]


def chunk_size() -> int:
    """Elements in a full chunk."""
    return MAX_ROWS * ROW


class Segment(NamedTuple):
    """Values ``chunk.array.reshape(-1)[start : start + length]`` are elements
    ``[offset, offset + length)`` of request ``index``'s region, in its row-major order."""

    index: int
    offset: int
    length: int
    start: int


class Runs(NamedTuple):
    """How a request's region lies in the flat tensor: ``len(starts)`` runs of ``run``
    consecutive flat indices, in region order."""

    starts: np.ndarray  # int64 flat index of each run's first element
    run: int
    indexed: bool  # rows hold one counter per element (packed densely)
    rows: int

    @property
    def rows_per_run(self) -> int:
        return -(-self.run // ROW)


def runs_of(req: Request) -> Runs:
    shape, region = req.shape, req.region
    j = len(shape) - 1
    while j >= 0 and region[j] == (0, shape[j]):
        j -= 1
    if j < 0:  # the whole tensor: one run
        n = math.prod(shape)
        return Runs(np.zeros(1, np.int64), n, False, -(-n // ROW))
    inner = math.prod(shape[j + 1 :])
    run = (region[j][1] - region[j][0]) * inner
    starts = np.array([region[j][0] * inner], np.int64)
    stride = inner * shape[j]
    for d in range(j - 1, -1, -1):
        a, b = region[d]
        starts = (np.arange(a, b, dtype=np.int64)[:, None] * stride + starts[None, :]).reshape(-1)
        stride *= shape[d]
    per_run = -(-run // ROW)
    # Whole rows per run when the runs fill their rows (consecutive runs then form one
    # segment) or are long (padding < 1/16); else one counter per element, densely.
    contiguous = len(starts) == 1 or run % ROW == 0 or run >= 16 * ROW
    if contiguous:
        return Runs(starts, run, False, len(starts) * per_run)
    return Runs(starts, run, True, -(-len(starts) * run // ROW))


class Group(NamedTuple):
    family: str
    dtype: np.dtype
    device: Any
    indexed: bool
    fast_div: bool
    members: list[int]  # request indices, in packing order
    nrows: int  # rows per chunk
    chunks: int

    @property
    def size(self) -> int:
        return self.nrows * ROW

    @property
    def chunk_shape(self) -> tuple[int, int]:
        return self.nrows, ROW

    @property
    def split(self) -> bool:
        """Full chunks of the normal families run as hash + transform (two programs)."""
        return (self.family in dist.SPLIT_FAMILIES and self.nrows == MAX_ROWS
                and self.size >= programs.SPLIT_MIN_SIZE)


def bucket(rows: int) -> int:
    return next(b for b in programs.ROW_BUCKETS if b >= rows)


def _fast_div(req: Request) -> bool:
    if req.plan.family != "eye":
        return False
    return dist.small_quotient_ok(math.prod(req.shape) + ROW, int(req.plan.iparams[0]) + 1)


def _group_of(members: list[int], total: int, req: Request, indexed: bool) -> Group:
    nrows = MAX_ROWS if total > MAX_ROWS else bucket(total)
    return Group(req.plan.family, req.dtype, req.device, indexed, _fast_div(req), members, nrows,
                  -(-total // nrows))


def groups_of(requests: Sequence[Request], runs: dict[int, Runs]) -> list[Group]:
    """The elementwise requests grouped by (family, dtype, device, packing), each group's
    members sorted by name, and the groups in a fixed order."""
    if len(runs) == 1:
        ((i, rr),) = runs.items()
        return [_group_of([i], rr.rows, requests[i], rr.indexed)]
    members: dict[tuple, list[int]] = defaultdict(list)
    for i, runs_i in runs.items():
        req = requests[i]
        members[(req.plan.family, req.dtype.name, str(req.device), runs_i.indexed, _fast_div(req))].append(i)
    groups = []
    for key in sorted(members):
        idx = sorted(members[key], key=lambda i: requests[i].name)
        groups.append(_group_of(idx, sum(runs[i].rows for i in idx), requests[idx[0]], key[3]))
    return groups


class ChunkArgs(NamedTuple):
    rows: np.ndarray  # (nrows, row width) uint32: key, first counter, parameters per row
    counters: tuple  # () or, for densely packed rows, (lo, hi) per element
    segments: list[Segment]


@functools.lru_cache(maxsize=1024)
def row_params(family: str, dtype: np.dtype, fparams: tuple, iparams: tuple) -> np.ndarray:
    """One row's parameter words as a program receives them (see
    :func:`xinit.core.distributions.program_fparams`, :func:`programs.pack_params`),
    computed once per distinct plan."""
    fam = dist.FAMILIES[family]
    with np.errstate(over="ignore"):  # a parameter beyond float32 becomes inf, as in the kernel
        fp = np.asarray(fparams, dist.param_dtype(family, dtype)).reshape(1, fam.n_float)
    ip = np.asarray(iparams, np.int32).reshape(1, fam.n_int)
    return programs.pack_params(dist.program_fparams(family, fp, dtype), ip)


def pack(group: Group, requests: Sequence[Request], runs: dict[int, Runs]) -> Iterator[ChunkArgs]:
    """The host arrays of each chunk of ``group``, one chunk at a time."""
    nrows = group.nrows
    width = programs.row_width(group.family, group.dtype)
    chunk = None
    used = 0
    for i in group.members:
        req, rr = requests[i], runs[i]
        template = np.zeros(width, np.uint32)  # the request's key and parameters, once
        template[programs.ROW_KEY] = req.key
        template[programs.ROW_PARAMS :] = row_params(group.family, group.dtype, req.plan.fparams,
                                                      req.plan.iparams)[0]
        g = 0
        while g < rr.rows:
            if chunk is None:
                counters = ((np.zeros((nrows, ROW), np.uint32), np.zeros((nrows, ROW), np.uint32))
                            if group.indexed else ())
                chunk = ChunkArgs(np.zeros((nrows, width), np.uint32), counters, [])
            take = min(nrows - used, rr.rows - g)
            rows = chunk.rows[used : used + take]
            rows[...] = template
            if rr.indexed:
                lo, hi = chunk.counters
                indexed_counters(rr, g, g + take, lo[used : used + take], hi[used : used + take])
            else:
                row_counters(rr, g, g + take, rows[:, programs.ROW_BASE_LO], rows[:, programs.ROW_BASE_HI])
            chunk.segments.extend(segments_of(i, rr, req.size, g, g + take, used))
            used += take
            g += take
            if used == nrows:
                yield chunk
                chunk, used = None, 0
    if chunk is not None:
        yield chunk


def split64(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    x = x.astype(np.uint64)
    lo[...] = (x & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi[...] = (x >> np.uint64(32)).astype(np.uint32)


def row_counters(rr: Runs, g0: int, g1: int, lo: np.ndarray, hi: np.ndarray) -> None:
    """Rows ``g0 .. g1 - 1`` of a request in whole-row layout: the counter of each row's first element."""
    if len(rr.starts) == 1:  # one run: consecutive rows
        first = int(rr.starts[0]) + g0 * ROW
        if first + (g1 - g0) * ROW <= 2**32:
            lo[...] = np.arange(first, first + (g1 - g0) * ROW, ROW, dtype=np.uint32)
            return
        split64(np.arange(first, first + (g1 - g0) * ROW, ROW, dtype=np.int64), lo, hi)
        return
    q, r = np.divmod(np.arange(g0, g1, dtype=np.int64), rr.rows_per_run)
    split64(rr.starts[q] + r * ROW, lo, hi)


def indexed_counters(rr: Runs, g0: int, g1: int, lo: np.ndarray, hi: np.ndarray) -> None:
    """Rows ``g0 .. g1 - 1`` of a densely packed request: one counter per element (the
    padding after the region's last element repeats its counter)."""
    total = len(rr.starts) * rr.run
    p0, p1 = g0 * ROW, min(g1 * ROW, total)
    q0, q1 = p0 // rr.run, (p1 - 1) // rr.run
    # counters = p + (start of p's run - first position of p's run), run by run
    lengths = np.full(q1 - q0 + 1, rr.run, np.int64)
    lengths[0] -= p0 - q0 * rr.run
    lengths[-1] -= (q1 + 1) * rr.run - p1
    shift = rr.starts[q0 : q1 + 1] - np.arange(q0, q1 + 1, dtype=np.int64) * rr.run
    flat = np.arange(p0, p1, dtype=np.int64) + np.repeat(shift, lengths)
    out = np.empty((g1 - g0) * ROW, np.int64)
    out[: p1 - p0] = flat
    out[p1 - p0 :] = flat[-1]
    split64(out.reshape(g1 - g0, ROW), lo, hi)


def segments_of(index: int, rr: Runs, size: int, g0: int, g1: int, c0: int) -> list[Segment]:
    """The segments of rows ``g0 .. g1 - 1`` of a request placed at chunk row ``c0``."""
    if rr.indexed or len(rr.starts) == 1 or rr.run % ROW == 0:
        # row g holds region elements [g * ROW, (g + 1) * ROW): one segment
        end = min(g1 * ROW, size)
        return [Segment(index, g0 * ROW, end - g0 * ROW, c0 * ROW)]
    per = rr.rows_per_run  # runs padded to whole rows: one segment per run
    segs = []
    g = g0
    while g < g1:
        q, r = divmod(g, per)
        stop = min(g1, (q + 1) * per)
        off = q * rr.run + r * ROW
        end = q * rr.run + min((stop - q * per) * ROW, rr.run)
        segs.append(Segment(index, off, end - off, (c0 + g - g0) * ROW))
        g = stop
    return segs


_SDS = jax.ShapeDtypeStruct
_U32 = np.dtype(np.uint32)


@functools.cache
def arg_types(family: str, dtype: np.dtype, nrows: int, indexed: bool, split: bool) -> tuple:
    """The argument types of a group's programs: (rows program,) or (unit, transform
    writing a buffer, transform writing over the uniforms)."""
    rows = (_SDS((nrows, programs.row_width(family, dtype)), _U32),)
    if indexed:
        rows += (_SDS((nrows, ROW), _U32), _SDS((nrows, ROW), _U32))
    out = _SDS((nrows, ROW), dtype)
    if not split:
        return ((out, *rows),)
    u = _SDS((nrows, ROW), dist.param_dtype(family, dtype))
    return (u, *rows), (out, u, rows[0]), (u, rows[0])


def group_programs(g: Group) -> list[tuple[programs.Program, tuple]]:
    """Every program a chunk of ``g`` runs, with its argument types (for compiling)."""
    types = arg_types(g.family, g.dtype, g.nrows, g.indexed, g.split)
    if g.split:
        unit, with_out, in_place = types
        cdt = dist.param_dtype(g.family, g.dtype)
        tp = programs.transform_program(g.family, g.dtype, g.nrows)
        return [(programs.unit_program(cdt, g.nrows, g.indexed), unit), (tp, with_out if tp.out else in_place)]
    prog = programs.rows_program(g.family, g.dtype, g.nrows, g.indexed, g.fast_div)
    return [(prog, types[0])]


